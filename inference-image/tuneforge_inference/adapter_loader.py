"""The adapter-loader sidecar: the one way adapters get into a serving Pod at run time.

Every serving Pod runs this small server as a second container on its own port (named
`adapters`, where the gateway sends loads). It exists for three reasons:

- **Authentication.** It answers only callers holding the deployment's serving token
  (tuneforge.serving_auth), which the gateway holds; the engine itself runs with the same
  token as its API key, so its own load endpoint is closed to everyone else too.
- **Ownership.** It loads a name only from the source that name stands for
  (adapter_policy): the gateway's choice of path is checked, never trusted.
- **Local paths.** vLLM reads adapters from local disk only; the sidecar copies the
  adapter into the cache directory both containers mount (the same path in both) and
  hands the engine that directory.

Before a load it asks the engine what it already holds under that name: the same source
is success without a reload; another source (an adapter registered some other way) is
unloaded first, so the name never keeps answering with the wrong weights. Its own errors
take the engine's JSON shape, so the gateway cannot tell the sidecar from the engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from tuneforge.config import settings
from tuneforge.contracts import ServingSpec
from tuneforge.serving_auth import bearer, pod_token

from tuneforge_inference.adapter_policy import NotPermitted, permitted_source
from tuneforge_inference.cpu.errors import APIError, bad_request, install_handlers, require_token
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


def create_app(current_spec: Callable[[], ServingSpec], engine: str, token: str, *,
               store_root: str | None = None, cache_dir: Path | None = None) -> FastAPI:
    """The sidecar of a Pod whose engine listens at base URL `engine` and takes `token`.
    `current_spec` gives the Pod's ServingSpec as it is now: the kubelet refreshes the
    mounted ConfigMap when the deployment's adapters change, and an adapter listed since
    the Pod started must be loadable without a restart. Adapters are fetched into
    `cache_dir` (default: the configured cache, the volume both containers mount)."""
    http = httpx.AsyncClient(base_url=engine, timeout=LOAD_TIMEOUT_S, headers=bearer(token))
    root = store_root or settings().store_root
    lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await http.aclose()

    app = FastAPI(title="tuneforge adapter loader", lifespan=lifespan)
    install_handlers(app)
    require_token(app, token)

    async def call(method: str, path: str, body: dict | None = None) -> httpx.Response:
        try:
            return await http.request(method, path, json=body)
        except httpx.TransportError as exc:
            # Refused: the engine is (re)starting, worth a retry; anything else broke mid-way.
            status = HTTPStatus.SERVICE_UNAVAILABLE if isinstance(exc, httpx.ConnectError) else HTTPStatus.BAD_GATEWAY
            raise APIError(status, f"the engine at {engine} is unreachable: {type(exc).__name__}: {exc}") from exc

    def relayed(answer: httpx.Response) -> Response:
        return Response(answer.content, status_code=answer.status_code, media_type=answer.headers.get("content-type"))

    async def held_source(name: str) -> str | None:
        """Where the engine loaded `name` from (its /v1/models `root`), if it holds it."""
        answer = await call("GET", "/v1/models")
        if answer.status_code != HTTPStatus.OK:
            raise APIError(HTTPStatus.BAD_GATEWAY, f"the engine's model list failed: {answer.status_code}")
        return next((card.get("root") for card in answer.json().get("data", []) if card.get("id") == name), None)

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
            source = permitted_source(body.lora_name, body.lora_path, current_spec(), root)
        except NotPermitted as exc:
            raise APIError(HTTPStatus.FORBIDDEN, f"Loading lora {body.lora_name} refused: {exc}",
                           err_type="PermissionDeniedError") from exc
        try:
            local = await asyncio.to_thread(fetch_adapter, body.lora_name, source, cache_dir)
        except FetchError as exc:
            raise APIError(
                HTTPStatus.NOT_FOUND,
                f"Loading lora {body.lora_name} failed: No adapter found for {body.lora_path} ({exc})",
                err_type="NotFoundError",
            ) from exc
        async with lock:
            held = await held_source(body.lora_name)
            if held == str(local):
                return Response(f"Success: LoRA adapter '{body.lora_name}' is loaded.", media_type="text/plain")
            if held is not None:
                unloaded = await call("POST", "/v1/unload_lora_adapter", {"lora_name": body.lora_name})
                if unloaded.status_code >= 400:
                    return relayed(unloaded)
            return relayed(await call("POST", "/v1/load_lora_adapter", {**raw, "lora_path": str(local)}))

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        async with lock:
            return relayed(await call("POST", "/v1/unload_lora_adapter", await _json_object(request)))

    return app


def serve(run_file: str, bind_host: str) -> None:
    """Runs the sidecar of the engine `run_file` describes, on its `adapter_loader_port`,
    until stopped."""
    token = pod_token()
    if token is None:
        raise ValueError("the adapter loader needs its deployment's serving token (TUNEFORGE_SERVING_TOKEN)")
    spec = ServingSpec.load(run_file)
    app = create_app(lambda: ServingSpec.load(run_file), engine_url(spec, bind_host), token)
    config = uvicorn.Config(app, host=bind_host, port=spec.adapter_loader_port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()
