"""The gateway application: the OpenAI routers under /v1, the management API under
/api/v1/fine-tuning, the dashboard under /ui and the API reference under /docs,
OpenAI-shaped error handling, request ids.

Stateless: the Kubernetes client, the artifact store handle, the HTTP client towards the
serving Pods and a few seconds of caches are all it keeps, so any number of replicas can
run behind one Service.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI
from kubernetes import client
from prometheus_client import start_http_server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneforge.gateway import batches, chat, dashboard, errors, files, fine_tuning, management, models
from tuneforge.gateway.auth import KeyResolver
from tuneforge.gateway.catalog import Catalog
from tuneforge.gateway.held import HeldRequests
from tuneforge.gateway.kube import Kube, load_api_client
from tuneforge.gateway.listing import ListingCache
from tuneforge.gateway.metrics import ACCESS_LOG, RequestTelemetry
from tuneforge.gateway.routing import Router
from tuneforge.gateway.settings import gateway_settings
from tuneforge.storage import ArtifactStore


class RequestId:
    """Pure ASGI middleware (no response buffering, so streams stay streams): takes the
    caller's x-request-id or makes one, exposes it as request.state.request_id, and sets
    it on every response, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if 0 < len(incoming) <= 200 else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _freeze_startup_objects() -> None:
    """Moves everything alive before serving (modules, the Kubernetes client's models,
    FastAPI's routes: over 100,000 objects) out of the collector's reach.
    Otherwise every full collection walks them all again: ~95 ms with the event loop
    stopped, which was the gateway's whole p99 under a steady 100 requests/s. Done by
    `serve` only, as a process's last step before its event loop starts."""
    gc.collect()
    gc.freeze()


def create_app(api_client: client.ApiClient | None = None, store: ArtifactStore | None = None) -> FastAPI:
    """The app; `api_client` and `store` default to the process configuration."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = gateway_settings()
        kube = Kube(api_client or load_api_client())
        # aiohttp rather than httpx for the hot proxy path: 0.24 vs 0.83 ms of CPU per
        # proxied request on loopback, most of what the gateway spends on a chat call.
        timeout = aiohttp.ClientTimeout(total=None, connect=60.0, sock_connect=5.0,
                                        sock_read=config.upstream_timeout_seconds)
        # Idle connections are dropped before the serving Pods' own keep-alive timeout
        # (uvicorn's and vLLM's 5 s), so a request never goes out on a connection the Pod
        # is closing at that moment.
        connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=2.0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            app.state.kube = kube
            app.state.listing = ListingCache(kube, max_objects=config.list_cache_max_objects,
                                             idle_seconds=config.list_cache_idle_seconds)
            app.state.store = store or ArtifactStore()
            app.state.keys = KeyResolver(kube)
            app.state.catalog = Catalog(kube, config.catalog_cache_seconds)
            held = HeldRequests(kube, limit=config.held_requests_per_deployment,
                                timeout=config.scale_up_timeout_seconds)
            app.state.router = Router(kube, http, config.route_cache_seconds, app.state.catalog, held=held,
                                      saturation=config.replica_saturation, policy=config.routing)
            sweeper = asyncio.create_task(files.sweep_abandoned_uploads_forever(app.state.store))
            try:
                yield
            finally:
                sweeper.cancel()
                app.state.listing.close()

    app = FastAPI(
        title="tuneforge gateway",
        version="v1",
        description="The OpenAI-compatible API of tuneforge: files, fine-tuning, batches, models and chat.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # Starlette tries the routes in order, a regex match each: chat, the hot path, goes first.
    for module in (chat, files, fine_tuning, batches, models):
        app.include_router(module.router, prefix="/v1")
    app.include_router(management.router)
    dashboard.install(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    errors.install(app)
    app.add_middleware(RequestId)
    app.add_middleware(RequestTelemetry)
    return app


def log_config() -> dict:
    """uvicorn's logging, its access format included for the gateway's own access log."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"][ACCESS_LOG.name] = config["loggers"]["uvicorn.access"]
    return config


def serve(host: str, port: int) -> None:
    """Runs the gateway with uvicorn (`tuneforge gateway`), and its metrics endpoint."""
    metrics_port = gateway_settings().metrics_port
    if metrics_port:
        start_http_server(metrics_port, addr=host)
    app = create_app()
    _freeze_startup_objects()
    # The access log is RequestTelemetry's, written once a response has been sent.
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=True, access_log=False,
                log_config=log_config())
