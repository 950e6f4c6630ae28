"""OpenAI-shaped errors: every failure leaves the gateway as
`{"error": {"message", "type", "param", "code"}}` with a status the official client maps to
its exception classes (400 BadRequest, 401 Authentication, 403 PermissionDenied, 404
NotFound, 409 Conflict, 413, 422 UnprocessableEntity, 429 RateLimit).

Permanent errors never use 409 or 5xx, because the client retries those.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIError(Exception):
    """An error to return to the caller in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        """Response headers, e.g. Retry-After on a 503 the client should retry later."""
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def not_found(kind: str, ident: str, *, param: str | None = None) -> OpenAIError:
    """404 for a missing id; also what another tenant's id yields, so ids never leak. The
    code is the kind in snake case (`fine_tuning_job_not_found`)."""
    code = kind.replace(" ", "_").replace("-", "_") + "_not_found"
    return OpenAIError(404, f"No {kind} found with id '{ident}'.", param=param, code=code)


def error_response(error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _param(loc: tuple) -> str | None:
    """`body.method.supervised.hyperparameters.n_epochs` -> the dotted field path."""
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    # Union members show up as extra loc entries such as "int" or "literal['auto']".
    parts = [part for part in parts if not part.startswith(("literal[", "function-")) and part not in ("int", "float", "str")]
    return ".".join(parts) or None


def install(app: FastAPI) -> None:
    """Registers the handlers that turn every exception into an OpenAI error body."""

    @app.exception_handler(OpenAIError)
    async def _openai(_: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _param(tuple(first.get("loc", ())))
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
        return error_response(bad_request(message, param=param, code=code))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(OpenAIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(OpenAIError(500, "The server had an error processing the request.", code="server_error"))
