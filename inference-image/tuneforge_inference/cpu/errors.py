"""Errors in the OpenAI/vLLM JSON shape: {"error": {"message", "type", "param", "code"}}.

The CPU engine stands in for vLLM, so it uses vLLM's error values (type names such as
`NotFoundError`, `code` = the HTTP status); the official `openai` client maps the status
to its exception classes (404 -> NotFoundError, 400 -> BadRequestError, 429 ->
RateLimitError) and reads `param` from the body.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tuneforge.serving_auth import is_authorized

ERROR_TYPES = {
    HTTPStatus.BAD_REQUEST: "BadRequestError",
    HTTPStatus.UNAUTHORIZED: "AuthenticationError",
    HTTPStatus.FORBIDDEN: "PermissionDeniedError",
    HTTPStatus.NOT_FOUND: "NotFoundError",
    HTTPStatus.TOO_MANY_REQUESTS: "RateLimitError",
    HTTPStatus.INTERNAL_SERVER_ERROR: "InternalServerError",
    HTTPStatus.BAD_GATEWAY: "BadGatewayError",
    HTTPStatus.SERVICE_UNAVAILABLE: "ServiceUnavailableError",
}


class APIError(Exception):
    """An error the server answers with; raised anywhere below a route."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        *,
        param: str | None = None,
        err_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.err_type = err_type or ERROR_TYPES.get(status, "BadRequestError")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.err_type, "param": self.param, "code": int(self.status)}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=int(self.status), headers=self.headers)


def install_handlers(app: FastAPI) -> None:
    """Answers APIError with its own JSON and anything unexpected with a 500 in the same
    shape, so that a client never has to parse a bare text error."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return APIError(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}").response()


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(HTTPStatus.BAD_REQUEST, message, param=param)


def model_not_found(model: str) -> APIError:
    return APIError(HTTPStatus.NOT_FOUND, f"The model `{model}` does not exist.", param="model")


def require_token(app: FastAPI, token: str | None) -> None:
    """Answers 401 to any /v1 request without `token` as its bearer token, as vLLM does when
    started with an API key (its middleware guards /v1 and leaves /health and /metrics
    open, and answers `{"error": "Unauthorized"}`). No token: nothing is guarded, for an
    engine run by hand outside a Pod."""
    if token is None:
        return

    @app.middleware("http")
    async def _authenticate(request: Request, call_next):
        if request.url.path.startswith("/v1") and not is_authorized(request.headers.get("authorization"), token):
            return JSONResponse({"error": "Unauthorized"}, status_code=HTTPStatus.UNAUTHORIZED)
        return await call_next(request)
