"""The CPU inference engine served by uvicorn on a loopback port, for the inference tests
and benchmark: built exactly as `tuneforge-serve` builds it, and reached with the
official openai client."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai

from tuneforge.contracts import ServingSpec

BASE_NAME = "tiny-base"
"""The name the tests' engine serves its base model under."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    base_url: str
    spec: ServingSpec
    token: str | None = None
    """The serving token the engine requires (the official client sends it as its API key)."""

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.token or "unused",
                             **{"max_retries": 0, **kwargs})


def wait_until_healthy(base_url: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} did not become healthy in {timeout_s}s")


def serve_in_thread(spec: ServingSpec, cache_dir: Path, token: str | None = None) -> Iterator[RunningServer]:
    """Builds the app exactly as `tuneforge-serve` does and runs it until the generator closes."""
    from tuneforge_inference.cpu.server import build_app, uvicorn_server

    server = uvicorn_server(build_app(spec, cache_dir=cache_dir, token=token), "127.0.0.1", spec.port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{spec.port}"
    try:
        wait_until_healthy(base_url)
        yield RunningServer(base_url, spec, token)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
