"""The adapter-loader sidecar: runtime LoRA loads from object stores for vLLM.

vLLM's `/v1/load_lora_adapter` reads `lora_path` from local disk only, but on a platform
with `s3://` storage a fine-tuned adapter exists only in the bucket. In vLLM serving Pods
this small server runs as a second container on its own port (named `adapters`, where the
gateway sends loads): it copies the adapter into the cache directory both containers mount
(an emptyDir, at the same path), forwards the load to the engine on loopback with that
directory as `lora_path`, and answers with the engine's own status and body. Unloads pass
through unchanged. Its own errors take the engine's JSON shape and, for a source that
cannot be fetched, the CPU engine's (vLLM's) status and wording, so the gateway cannot
tell the sidecar from the engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from tuneforge.contracts import ServingSpec

from tuneforge_inference.cpu.errors import APIError, bad_request, install_handlers
from tuneforge_inference.cpu.protocol import LoadLoRAAdapterRequest, parse_request
from tuneforge_inference.fetch import FetchError, fetch_adapter

LOAD_TIMEOUT_S = 600.0
"""vLLM reads and checks the adapter weights before it answers a load."""

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def engine_url(spec: ServingSpec, bind_host: str) -> str:
    """Where the engine in the same Pod listens: loopback when it binds every address, else
    the address it binds (the local platform gives each Pod its own loopback address)."""
    host = "127.0.0.1" if bind_host in _WILDCARD_HOSTS else bind_host
    return f"http://{host}:{spec.port}"


async def _json_object(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def create_app(engine: str, cache_dir: Path | None = None) -> FastAPI:
    """The sidecar for the engine at base URL `engine`, fetching into `cache_dir` (default:
    the configured cache, which the Pod points at the shared emptyDir)."""
    http = httpx.AsyncClient(base_url=engine, timeout=LOAD_TIMEOUT_S)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await http.aclose()

    app = FastAPI(title="tuneforge adapter loader", lifespan=lifespan)

    install_handlers(app)

    async def forward(path: str, content: bytes) -> Response:
        try:
            answer = await http.post(path, content=content, headers={"content-type": "application/json"})
        except httpx.TransportError as exc:
            # Refused: the engine is (re)starting, worth a retry; anything else broke mid-way.
            status = HTTPStatus.SERVICE_UNAVAILABLE if isinstance(exc, httpx.ConnectError) else HTTPStatus.BAD_GATEWAY
            raise APIError(status, f"the engine at {engine} is unreachable: {type(exc).__name__}: {exc}") from exc
        return Response(answer.content, status_code=answer.status_code, media_type=answer.headers.get("content-type"))

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        raw = await _json_object(request)
        body = parse_request(LoadLoRAAdapterRequest, raw)
        if not body.lora_name or not body.lora_path:
            raise APIError(HTTPStatus.BAD_REQUEST, "Both 'lora_name' and 'lora_path' must be provided.",
                           err_type="InvalidUserInput")
        try:
            local = await asyncio.to_thread(fetch_adapter, body.lora_name, body.lora_path, cache_dir)
        except FetchError as exc:
            raise APIError(
                HTTPStatus.NOT_FOUND,
                f"Loading lora {body.lora_name} failed: No adapter found for {body.lora_path} ({exc})",
                err_type="NotFoundError",
            ) from exc
        return await forward("/v1/load_lora_adapter", json.dumps({**raw, "lora_path": str(local)}).encode())

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        return await forward("/v1/unload_lora_adapter", await request.body())

    return app


def serve(spec: ServingSpec, bind_host: str) -> None:
    """Runs the sidecar of `spec`'s engine on `spec.adapter_loader_port` until stopped."""
    app = create_app(engine_url(spec, bind_host))
    config = uvicorn.Config(app, host=bind_host, port=spec.adapter_loader_port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()
