"""Test data for the gateway tests, and a minimal OpenAI-compatible model server for the
chat proxy tests: answers chat
completions (plain and SSE), implements vLLM's /v1/load_lora_adapter, and records what it
received so tests can assert what the gateway sent. `ready_shared_deployment` makes the
gateway route a base model to a loopback server (also used by tests/bench/bench_gateway.py).

It answers only models it serves (the base model and loaded adapters), with vLLM's 404
otherwise, so a gateway that skipped loading the adapter fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from kubernetes import client

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.serving_auth import PLATFORM_KEY_FIELD, PLATFORM_KEY_SECRET, new_platform_key


@contextmanager
def ready_shared_deployment(api_client: client.ApiClient, system_namespace: str, base_model: str,
                            *ports: int) -> Iterator[str]:
    """The base model's shared ModelDeployment in the system namespace with one ready Pod
    at 127.0.0.1:`port` for each of `ports`, deleted afterwards; yields the deployment's
    name.

    The Pod objects are real (created in the API server, their status patched to
    Running/Ready as a kubelet would report it), so the gateway routes through exactly what
    it uses in a cluster: ModelDeployment -> Deployment selector -> ready Pods -> IP:port.
    """
    name = f"shared-{uuid.uuid4().hex[:8]}"
    labels = {"app": name}
    custom, apps, core = client.CustomObjectsApi(api_client), client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    platform_serving_key(api_client, system_namespace)
    custom.create_namespaced_custom_object(GROUP, VERSION, system_namespace, "modeldeployments", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
        "metadata": {"name": name, "labels": {"tuneforge.io/base-model": base_model, "tuneforge.io/shared": "true"}},
        "spec": {"baseModel": base_model, "maxAdapters": 4},
    })
    container = {"name": "engine", "image": "tuneforge/inference:test"}
    apps.create_namespaced_deployment(system_namespace, {
        "metadata": {"name": name},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}},
    })
    pods = [f"{name}-pod-{i}" for i in range(len(ports))]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for pod, port in zip(pods, ports, strict=True):
        core.create_namespaced_pod(system_namespace, {
            "metadata": {"name": pod, "labels": labels},
            "spec": {"containers": [{**container, "ports": [{"name": "http", "containerPort": port}]}]},
        })
        core.patch_namespaced_pod_status(pod, system_namespace, {"status": {
            "phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        }})
    try:
        yield name
    finally:
        for pod in pods:
            core.delete_namespaced_pod(pod, system_namespace, grace_period_seconds=0)
        apps.delete_namespaced_deployment(name, system_namespace)
        custom.delete_namespaced_custom_object(GROUP, VERSION, system_namespace, "modeldeployments", name)


def platform_serving_key(api_client: client.ApiClient, system_namespace: str) -> str:
    """The platform key serving tokens derive from, created as the operator does when the
    test runs without one."""
    core = client.CoreV1Api(api_client)
    try:
        core.create_namespaced_secret(system_namespace, {
            "metadata": {"name": PLATFORM_KEY_SECRET}, "stringData": {PLATFORM_KEY_FIELD: new_platform_key()}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    secret = core.read_namespaced_secret(PLATFORM_KEY_SECRET, system_namespace)
    return base64.b64decode(secret.data[PLATFORM_KEY_FIELD]).decode()


KEEP_TALKING = "keep talking"
"""The last message that gets a streamed answer of 100 chunks over 5 s."""


def make_upstream(base_model: str) -> FastAPI:
    """The server; `app.state.authorizations` records the Authorization header of every
    request, so tests can check the gateway sent the deployment's serving token."""
    app = FastAPI()
    app.state.loads = []
    app.state.requests = []
    app.state.adapters = {}
    app.state.authorizations = []
    app.state.abandoned_streams = []  # chunks sent by each stream its client left early

    @app.middleware("http")
    async def record_authorization(request: Request, call_next):
        app.state.authorizations.append(request.headers.get("authorization"))
        return await call_next(request)

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request):
        body = await request.json()
        app.state.loads.append(body)
        app.state.adapters[body["lora_name"]] = body["lora_path"]
        return JSONResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.requests.append({"body": body, "request_id": request.headers.get("x-request-id")})
        model = body["model"]
        if model != base_model and model not in app.state.adapters:
            return JSONResponse({"error": {"message": f"The model `{model}` does not exist.", "type": "NotFoundError",
                                           "param": "model", "code": 404}}, status_code=404)
        if body.get("max_tokens") == 0:
            return JSONResponse({"error": {"message": "max_tokens must be at least 1", "type": "BadRequestError",
                                           "param": "max_tokens", "code": "invalid_value"}}, status_code=400)
        if body.get("max_tokens") == -1:  # vLLM's answer to what its request model refuses
            return JSONResponse({"error": {"message": "1 validation error: max_tokens", "type": "Bad Request",
                                           "param": "body.max_tokens", "code": 400}}, status_code=400)
        words = ["hello", " from", f" {model}"]
        if not body.get("stream"):
            return {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(words)}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            }

        if body["messages"][-1]["content"] == KEEP_TALKING:
            words = [" word"] * 100

        async def events():
            sent = 0
            try:
                for word in words:
                    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                             "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                    sent += 1
                    # A pause between chunks: a proxy that buffered would deliver them together.
                    await asyncio.sleep(0.2 if len(words) < 100 else 0.05)
                yield "data: [DONE]\n\n"
            finally:
                if sent < len(words):
                    app.state.abandoned_streams.append(sent)

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def training_lines(n: int = 10) -> bytes:
    rows = [
        '{"messages": [{"role": "user", "content": "Say %d"}, {"role": "assistant", "content": "%d"}]}' % (i, i)
        for i in range(n)
    ]
    return ("\n".join(rows) + "\n").encode()


def batch_lines(n: int = 3, model: str = "tiny") -> bytes:
    rows = [
        '{"custom_id": "r%d", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "%s", "messages": [{"role": "user", "content": "hi"}]}}' % (i, model)
        for i in range(n)
    ]
    return ("\n".join(rows) + "\n").encode()


class ServerThread:
    """A uvicorn server in a daemon thread, started and stopped deterministically."""

    def __init__(self, app, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
