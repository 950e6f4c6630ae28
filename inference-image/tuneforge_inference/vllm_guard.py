"""The serving token on every route of vLLM's API server, not only on vLLM's own list.

vLLM's API key (`VLLM_API_KEY`, which tuneforge sets to the deployment's serving token)
is checked by vLLM's `AuthenticationMiddleware` only on paths starting with `/v1`, `/v2`,
`/inference` or `/cohere` (`GUARDED_PREFIX` in
vllm/entrypoints/serve/middleware/authenticate.py). vLLM 0.33.0 also serves routes outside
those prefixes, and several change or use the engine: with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True the SageMaker adapter routes `POST /adapters` and
`DELETE /adapters/{adapter_name}` (registered by vllm/entrypoints/serve/lora/api_router.py
through model-hosting-container-standards, mounted by `sagemaker_standards_bootstrap` in
`build_app`) load and unload adapters, and `POST /invocations`, `/generative_scoring`,
`/tokenize` and `/scale_elastic_ep` are open as well. Anyone who reaches the engine port
could use them without the key.

`ServingTokenMiddleware` closes that: the launcher passes it to `vllm serve` as
`--middleware tuneforge_inference.vllm_guard.ServingTokenMiddleware`, which vLLM (in
`init_entrypoints_middleware`, vllm/entrypoints/serve/middleware/register.py) imports and,
being a class, adds with `app.add_middleware(cls)`: no arguments, and as the last one
added it is the outermost of vLLM's middlewares, so it sees every request before vLLM's
routing (model-hosting-container-standards re-orders the stack in
`sagemaker_standards_bootstrap` and would put a throttle middleware named in
CUSTOM_FASTAPI_MIDDLEWARE_THROTTLE outside it; tuneforge sets none). It requires `Authorization: Bearer <TUNEFORGE_SERVING_TOKEN>` on every HTTP and
WebSocket request and answers 401 `{"error": "Unauthorized"}` otherwise, as vLLM's own
middleware does, except on the paths in `OPEN_PATHS`:

- `/health`: the kubelet's startup, readiness and liveness probes
  (tuneforge.controllers.builders.serving), which carry no credentials;
- `/metrics`: what the serving ServiceMonitor scrapes (charts/tuneforge/templates/
  servicemonitors.yaml), without credentials. Only this exact path: vLLM also mounts its
  Prometheus app under every path starting with `/metrics`, which stay guarded.

Nothing else is open. vLLM's other probe-like routes (`/ping`, SageMaker's health check;
`/version`; `/load`) are called by nothing in a tuneforge Pod, and `POST /ping` is not a
read. OPTIONS (CORS preflight, which vLLM's middleware lets through) needs the token too:
the engine's only callers are the gateway and the adapter-loader sidecar, never a browser.
Lifespan events pass through untouched.

The token is read from the environment when the middleware is constructed (when vLLM
builds its app, before it serves a request); without one the constructor raises, so a
misconfigured Pod fails to start instead of serving an open engine. Only the standard
library and tuneforge.serving_auth are imported: the class is plain ASGI and runs under
whatever Starlette vLLM ships.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tuneforge.serving_auth import TOKEN_ENV, is_authorized

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/metrics"})
"""Paths answered without the token (see the module docstring for why each)."""

UNAUTHORIZED_BODY = json.dumps({"error": "Unauthorized"}, separators=(",", ":")).encode()
"""vLLM's own 401 body, byte for byte (Starlette's JSONResponse renders it compactly)."""

POLICY_VIOLATION = 1008
"""WebSocket close code for a refused handshake where the server cannot send a 401."""


class MissingServingToken(RuntimeError):
    """The environment holds no serving token, so there is nothing to guard vLLM with."""


class ServingTokenMiddleware:
    """ASGI middleware requiring the deployment's serving token on all but `OPEN_PATHS`."""

    def __init__(self, app: ASGIApp) -> None:
        token = os.environ.get(TOKEN_ENV, "")
        if not token.strip():
            raise MissingServingToken(
                f"{TOKEN_ENV} is not set: refusing to serve vLLM without its deployment's serving token "
                "(its adapter and inference routes would be open to any caller)"
            )
        self.app = app
        self._token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await _send_unauthorized(send, "")
        elif "websocket.http.response" in scope.get("extensions", {}):
            await _send_unauthorized(send, "websocket.")
        else:
            await send({"type": "websocket.close", "code": POLICY_VIOLATION})

    def _allowed(self, scope: Scope) -> bool:
        # The path routing sees, as vLLM's middleware computes it.
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        return path in OPEN_PATHS or is_authorized(_authorization(scope), self._token)


def _authorization(scope: Scope) -> str | None:
    """The first Authorization header, as Starlette's `Headers.get` would return it."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            return value.decode("latin-1")
    return None


async def _send_unauthorized(send: Send, prefix: str) -> None:
    await send({
        "type": f"{prefix}http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(UNAUTHORIZED_BODY)).encode()),
            (b"www-authenticate", b"Bearer"),
        ],
    })
    await send({"type": f"{prefix}http.response.body", "body": UNAUTHORIZED_BODY})
