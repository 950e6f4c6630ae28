"""/v1/chat/completions: a proxy to the serving Pods of the model's deployment.

The request body is forwarded byte for byte (no re-serialisation), once its parameters
passed the checks of `openai_protocol.ChatCompletionRequest`; only a request naming a
catalog model by its alias (the BaseModel's resource name) is re-encoded, with the model
id the engine serves in `model` (`with_model`). A streamed response is relayed chunk by
chunk as the upstream produces it. Interactive clients and the batch
runner (with its chat-scoped key) take this same path, so both get the same routing and
adapter loading, and both wait while an autoscaled deployment scales up from zero
(`Router.ready_route`). Upstream failures come back as OpenAI errors: the upstream's own
error body when it sent one, 502 when a Pod could not be reached or broke.

The route has no response_model on purpose: the body is the engine's, relayed untouched,
so the gateway neither parses nor promises its shape. The request body is documented from
ChatCompletionRequest but read by hand, so that invalid JSON is its own error.
"""

from __future__ import annotations

import json
import re

import aiohttp
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.errors import OpenAIError, bad_request
from tuneforge.gateway.openai_protocol import ChatCompletionRequest
from tuneforge.gateway.routing import Pod, Route, Router
from tuneforge.serving_auth import bearer

router = APIRouter(tags=["chat"])

_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema()}},
    }
}


_UNION_BRANCH = re.compile(r"^(str|int|float|bool|\[key\]|[a-z-]+\[.*\])$")
"""What pydantic adds to an error's location besides field names and keys: the union
member tried (`str`, `list[str]`) and `[key]` for a bad dict key."""


def parse_request(raw: bytes) -> ChatCompletionRequest:
    """The request, checked; a body that is not a valid chat request is a 400 naming the
    parameter (OpenAI's `param` is the top-level parameter, whatever nests inside it)."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"The body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        where = ".".join(str(part) for part in first["loc"] if isinstance(part, int) or not _UNION_BRANCH.match(part))
        code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
        raise bad_request(f"{where}: {first['msg']}" if where else first["msg"], param=param, code=code) from exc


KEPT_STATUS = {400: "invalid_request", 404: "model_not_found", 413: "request_too_large",
               422: "invalid_request", 429: "rate_limit_exceeded", 503: "engine_overloaded"}
"""Engine statuses a client gets as they are, each with OpenAI's type for it
(`errors.OpenAIError`: invalid_request_error, rate_limit_error for 429, server_error for
503) and the code it gets when the engine gave none of its own: vLLM and the CPU engine,
which mirrors it, put an exception name (`BadRequestError`) in `type` and the HTTP status
in `code`, neither of which an OpenAI client expects."""


def _engine_param(param: object) -> str | None:
    """The parameter an engine blamed: vLLM's request validation names it as a location
    in the body (`body.stop`), OpenAI names the parameter (`stop`)."""
    if not isinstance(param, str) or param in ("", "body"):
        return None
    return param.removeprefix("body.")


def _engine_error(content: bytes) -> tuple[str, str | None, str | None]:
    """(message, param, code) of an engine's error body: OpenAI's shape, vLLM's
    `{"error": "Unauthorized"}` of its API-key check, FastAPI's `{"detail": ...}`, or text."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        return (str(error.get("message") or "upstream error"), _engine_param(error.get("param")),
                code if isinstance(code, str) and code else None)
    detail = error or (body.get("detail") if isinstance(body, dict) else None)
    return str(detail or content[:500].decode(errors="replace") or "upstream error"), None, None


def upstream_error(status: int, content: bytes) -> OpenAIError:
    """An engine's error response as an OpenAI error: its message and param, OpenAI's type
    for the status (never the engine's exception name) and a string code, the engine's own
    when it gave one. Client errors keep their status (others become 400: a permanent error
    must not look retryable); server failures become 502.

    An engine's 401 or 403 refuses the gateway's serving token, not the caller's key (which
    the gateway accepted), so it is a 502 of the platform's rather than a reason for the
    caller to doubt its key. vLLM's 501 (a feature it lacks) is permanent: a 400."""
    message, param, code = _engine_error(content)
    if status in KEPT_STATUS:
        return OpenAIError(status, message, param=param, code=code or KEPT_STATUS[status])
    if status in (401, 403):
        return OpenAIError(502, f"The model server refused the gateway's serving token: {message}",
                           code="upstream_unauthorized", type="server_error")
    if status == 501:
        return OpenAIError(400, message, param=param, code=code or "unsupported_by_engine")
    if 400 <= status < 500:
        return OpenAIError(400, message, param=param, code=code or "upstream_rejected")
    return OpenAIError(502, f"The model server failed: {message}", code="upstream_error", type="server_error")


def with_model(raw: bytes, model: str) -> bytes:
    """The request body (valid JSON, checked by `parse_request`) naming `model` instead."""
    return json.dumps({**json.loads(raw), "model": model}, ensure_ascii=False).encode()


async def _send(router_: Router, pod: Pod, route: Route, raw: bytes, request_id: str) -> aiohttp.ClientResponse:
    """The Pod's response with its body still unread (a stream is relayed as it comes);
    the caller releases it."""
    await router_.ensure_adapter(pod, route, request_id)
    return await router_.http.post(
        f"{pod.url}/v1/chat/completions", data=raw,
        headers={"content-type": "application/json", "x-request-id": request_id, **bearer(route.token)},
    )


async def _release(upstream: aiohttp.ClientResponse, router_: Router, pod: Pod, route: Route) -> None:
    """Returns a relayed stream's connection to the pool (or closes it when the client
    left mid-stream) and ends its in-flight count; Starlette runs it after the response,
    disconnects included."""
    upstream.release()
    router_.finished(pod, route)


async def _forward(router_: Router, route: Route, raw: bytes, chat: ChatCompletionRequest,
                   request_id: str) -> Response | None:
    """The response of the first replica of `route` that could be reached, or None."""
    stream = chat.stream is True
    if route.model != chat.model:
        raw = with_model(raw, route.model)
    tried: set[str] = set()
    while (pod := router_.choose(route, tried)) is not None:
        tried.add(pod.uid)
        router_.started(pod, route)
        relaying = False
        try:
            upstream = await _send(router_, pod, route, raw, request_id)
            if upstream.status == 404 and route.adapter is not None:
                # The engine dropped the adapter (restart, another gateway's unload): load it again.
                upstream.release()
                router_.forget_adapter(pod, route.adapter)
                upstream = await _send(router_, pod, route, raw, request_id)
            if not stream or upstream.status >= 400:
                content = await upstream.read()
                upstream.release()
            else:
                relaying = True
        except aiohttp.ClientError:
            continue
        finally:
            if not relaying:
                router_.finished(pod, route)
        if upstream.status >= 400:
            raise upstream_error(upstream.status, content)
        media_type = upstream.headers.get("content-type", "application/json")
        if stream:
            return StreamingResponse(upstream.content.iter_any(), status_code=upstream.status, media_type=media_type,
                                     background=BackgroundTask(_release, upstream, router_, pod, route))
        return Response(content, status_code=upstream.status, media_type=media_type)
    return None


@router.post("/chat/completions", openapi_extra=_BODY_SCHEMA, summary="Create a chat completion")
async def chat_completions(request: Request, principal: Principal = Depends(require("chat"))) -> Response:
    raw = await request.body()
    chat = parse_request(raw)
    router_: Router = request.app.state.router
    request_id = request.state.request_id
    route = await router_.ready_route(principal.tenant, chat.model)
    response = await _forward(router_, route, raw, chat, request_id)
    if response is None:
        # No replica of the cached route could be reached: it was stale (Pods replaced, or
        # the deployment scaled to zero). Once more, on the replicas ready now.
        router_.forget(principal.tenant, chat.model)
        route = await router_.ready_route(principal.tenant, chat.model)
        response = await _forward(router_, route, raw, chat, request_id)
    if response is None:
        raise OpenAIError(502, f"No replica serving '{chat.model}' could be reached.", code="upstream_unreachable",
                          type="server_error")
    return response
