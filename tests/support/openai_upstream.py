"""A minimal OpenAI-compatible chat-completions server for tests and benchmarks.

A real HTTP server on a loopback port (uvicorn), so clients are exercised through real
sockets, keep-alive and status handling rather than a mocked transport. It answers
`POST /v1/chat/completions` with an echo chat.completion (or, with `"stream": true`, the
same answer as server-sent chat.completion.chunk events, one per word, then `[DONE]`) and
`GET /v1/models`, and it can be scripted: a fixed latency for every request, and per-request behaviour keyed by the
content of the last message (e.g. "answer 429 with Retry-After: 1, then 500, then
succeed"), or SIGKILL a client process when a given request's answer is ready (an answer
that kills its client). `GET /_stats` reports what arrived and how many other requests
were in flight at each arrival, so tests can check retries happened, that a rejected batch
sent nothing, and that a request was sent alone.

Run in a thread (`serve_in_thread`, cheap, for tests) or in its own process
(`serve_in_subprocess`, for benchmarks, so the server does not share the client's GIL).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Step:
    """One scripted answer: `status` 200 means a normal completion after `delay_s`."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class UpstreamConfig:
    latency_s: float = 0.0
    models: list[str] = field(default_factory=lambda: ["tiny-chat"])
    api_key: str | None = None
    # last message content -> answers for its 1st, 2nd, ... attempt; later attempts succeed.
    scripts: dict[str, list[Step]] = field(default_factory=dict)
    # last message content -> pid to SIGKILL once the answer is ready (after the delay),
    # as an answer too large for the client's memory would; set it live per client process.
    kill_pid_on: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "UpstreamConfig":
        raw = json.loads(text)
        raw["scripts"] = {key: [Step(**step) for step in steps] for key, steps in raw["scripts"].items()}
        return cls(**raw)


class OpenAIUpstream:
    """The ASGI application (no framework: the server should cost as little as possible
    so that benchmarks measure the client)."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.requests = 0
        self.attempts: dict[str, int] = defaultdict(int)
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        # last message content -> how many other completions were being answered as it arrived
        self.others_in_flight: dict[str, list[int]] = defaultdict(list)
        self.active = 0
        self.auth_failures = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, payload, extra = await self.handle(scope["method"], scope["path"], headers, body)
        if status == 200 and payload.get("object") == "chat.completion" and json.loads(body).get("stream"):
            await self._stream(send, payload, extra)
            return
        data = json.dumps(payload).encode()
        response_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        response_headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": data})

    @staticmethod
    async def _stream(send: Any, completion: dict, extra: dict[str, str]) -> None:
        """The completion as SSE chunks, each sent as its own body message (as an engine
        emits tokens), so a proxy's per-chunk cost shows."""
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        words = completion["choices"][0]["message"]["content"].split(" ")
        for i, word in enumerate(words):
            chunk = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
                     "model": completion["model"],
                     "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word},
                                  "finish_reason": "stop" if i == len(words) - 1 else None}]}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        if method == "GET" and path == "/_stats":
            stats = {"requests": self.requests, "attempts": self.attempts, "arrivals": self.arrivals,
                     "others_in_flight": self.others_in_flight}
            return 200, stats, {}
        if self.config.api_key is not None and headers.get("authorization") != f"Bearer {self.config.api_key}":
            self.auth_failures += 1
            return 401, _error("invalid_api_key", "Incorrect API key provided"), {}
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.config.models]}, {}
        if method != "POST" or path != "/v1/chat/completions":
            return 404, _error("not_found", f"no route {method} {path}"), {}
        self.requests += 1
        request = json.loads(body)
        content = str(request["messages"][-1].get("content", ""))
        self.attempts[content] += 1
        self.arrivals[content].append(time.monotonic())
        self.others_in_flight[content].append(self.active)
        self.active += 1
        try:
            return await self._complete(request, content)
        finally:
            self.active -= 1

    async def _complete(self, request: dict, content: str) -> tuple[int, Any, dict]:
        steps = self.config.scripts.get(content, [])
        step = steps[self.attempts[content] - 1] if self.attempts[content] <= len(steps) else Step()
        delay = step.delay_s or self.config.latency_s
        if delay:
            await asyncio.sleep(delay)
        if content in self.config.kill_pid_on:
            os.kill(self.config.kill_pid_on[content], signal.SIGKILL)
        request_id = {"x-request-id": f"upstream-{uuid.uuid4().hex[:16]}"}
        if step.status != 200:
            return step.status, _error(f"scripted_{step.status}", f"scripted status {step.status}"), step.headers | request_id
        if request.get("model") not in self.config.models:
            return 404, _error("model_not_found", f"The model {request.get('model')!r} does not exist"), request_id
        return 200, _completion(request["model"], content), request_id


def _error(code: str, message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def _completion(model: str, content: str) -> dict:
    prompt_tokens = len(content.split()) + 1
    answer = f"echo: {content}"
    completion_tokens = len(answer.split())
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _server(app: OpenAIUpstream) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", backlog=4096)
    return uvicorn.Server(config)


@dataclass
class RunningUpstream:
    base_url: str
    app: OpenAIUpstream | None = None

    def stats(self) -> dict[str, Any]:
        """What has arrived so far (through HTTP, so it works for both ways of running)."""
        import httpx

        return httpx.get(self.base_url.removesuffix("/v1") + "/_stats", timeout=10).json()


@contextmanager
def serve_in_thread(config: UpstreamConfig) -> Iterator[RunningUpstream]:
    """Serves in a daemon thread of this process; `app.config` may be changed live."""
    app = OpenAIUpstream(config)
    server = _server(app)
    sock = _bound_socket()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("upstream did not start")
        time.sleep(0.01)
    try:
        yield RunningUpstream(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def serve_in_subprocess(config: UpstreamConfig) -> Iterator[RunningUpstream]:
    """Serves from a child process (its own interpreter and GIL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.openai_upstream", config.to_json()],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        port = int(proc.stdout.readline())
        yield RunningUpstream(f"http://127.0.0.1:{port}/v1")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    """Child-process entry: prints the port once the socket listens, then serves (the
    kernel queues connections that arrive before uvicorn starts accepting)."""
    server = _server(OpenAIUpstream(UpstreamConfig.from_json(sys.argv[1])))
    sock = _bound_socket()
    sock.listen(4096)
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
