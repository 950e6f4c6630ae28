"""/v1/chat/completions: a proxy to the serving Pods of the model's deployment.

The request body is forwarded byte for byte (no re-serialisation), after the few checks
the engines do not make as OpenAI does (`stop` holds at most 4 sequences); a streamed response
is relayed chunk by chunk as the upstream produces it. Interactive clients and the batch
runner (with its chat-scoped key) take this same path, so both get the same routing and
adapter loading. Upstream failures come back as OpenAI errors: the upstream's own error
body when it sent one, 502 when a Pod could not be reached or broke.

The route has no response_model on purpose: the body is the engine's, relayed untouched,
so the gateway neither parses nor promises its shape.
"""

from __future__ import annotations

import json

import aiohttp
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.errors import OpenAIError, bad_request
from tuneforge.gateway.routing import Pod, Route, Router
from tuneforge.serving_auth import bearer

router = APIRouter(tags=["chat"])

_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model", "messages"],
                    "properties": {
                        "model": {"type": "string", "minLength": 1},
                        "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                        "stream": {"type": "boolean"},
                    },
                }
            }
        },
    }
}
_PASSTHROUGH_STATUS = (400, 404, 413, 422, 429, 503)
MAX_STOP_SEQUENCES = 4
"""OpenAI's limit, checked here because vLLM takes any number."""


def _parse(raw: bytes) -> tuple[str, bool]:
    """The model and the stream flag; a body that is not a chat request is a 400."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"The body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string.", param="model",
                          code="missing_required_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array.", param="messages", code="invalid_value")
    stop = body.get("stop")
    if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
        raise bad_request(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences, not {len(stop)}.", param="stop",
                          code="invalid_value")
    return model, body.get("stream") is True


UPSTREAM_CODES = {400: "invalid_request", 404: "model_not_found", 413: "request_too_large",
                  422: "invalid_request", 429: "rate_limit_exceeded", 503: "engine_overloaded"}
"""The code of an engine error that carries none of its own: vLLM (and the CPU engine,
which mirrors it) put the HTTP status in `code` and an exception name (`BadRequestError`)
in `type`, neither of which an OpenAI client expects."""


def upstream_error(status: int, content: bytes) -> OpenAIError:
    """An engine's error response as an OpenAI error: its message and param, OpenAI's type
    for the status (never the engine's exception name) and a string code, the engine's
    own when it gave one. Client errors keep their status, server failures become 502."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "upstream error")
        param, code = error.get("param"), error.get("code")
    else:
        detail = body.get("detail") if isinstance(body, dict) else None
        message = str(detail or content[:500].decode(errors="replace") or "upstream error")
        param = code = None
    param = param if isinstance(param, str) else None
    if status in _PASSTHROUGH_STATUS:
        own = code if isinstance(code, str) and code else UPSTREAM_CODES[status]
        return OpenAIError(status, message, param=param, code=own, type=None if status < 500 else "server_error")
    if 400 <= status < 500:
        return OpenAIError(400, message, param=param, code=code if isinstance(code, str) and code else "upstream_rejected")
    return OpenAIError(502, f"The model server failed: {message}", code="upstream_error", type="server_error")


async def _send(router_: Router, pod: Pod, route: Route, raw: bytes, request_id: str) -> aiohttp.ClientResponse:
    """The Pod's response with its body still unread (a stream is relayed as it comes);
    the caller releases it."""
    await router_.ensure_adapter(pod, route, request_id)
    return await router_.http.post(
        f"{pod.url}/v1/chat/completions", data=raw,
        headers={"content-type": "application/json", "x-request-id": request_id, **bearer(route.token)},
    )


async def _release(upstream: aiohttp.ClientResponse) -> None:
    """Returns a relayed stream's connection to the pool (or closes it when the client
    left mid-stream); Starlette runs it after the response, disconnects included."""
    upstream.release()


@router.post("/chat/completions", openapi_extra=_BODY_SCHEMA, summary="Create a chat completion")
async def chat_completions(request: Request, principal: Principal = Depends(require("chat"))) -> Response:
    raw = await request.body()
    model, stream = _parse(raw)
    router_: Router = request.app.state.router
    request_id = request.state.request_id
    route = await router_.route(principal.tenant, model)
    tried: set[str] = set()
    while (pod := router_.choose(route, tried)) is not None:
        tried.add(pod.uid)
        presumed_loaded = route.adapter is not None and router_.holds(pod, route.adapter)
        try:
            upstream = await _send(router_, pod, route, raw, request_id)
            if upstream.status == 404 and presumed_loaded:
                # The engine dropped the adapter (restart or its own LRU): load it again.
                upstream.release()
                router_.forget_adapter(pod, route.adapter)
                upstream = await _send(router_, pod, route, raw, request_id)
            if not stream or upstream.status >= 400:
                content = await upstream.read()
                upstream.release()
        except aiohttp.ClientError:
            router_.forget(principal.tenant, model)
            continue
        if upstream.status >= 400:
            raise upstream_error(upstream.status, content)
        media_type = upstream.headers.get("content-type", "application/json")
        if stream:
            return StreamingResponse(upstream.content.iter_any(), status_code=upstream.status, media_type=media_type,
                                     background=BackgroundTask(_release, upstream))
        return Response(content, status_code=upstream.status, media_type=media_type)
    raise OpenAIError(502, f"No replica serving '{model}' could be reached.", code="upstream_unreachable",
                      type="server_error")
