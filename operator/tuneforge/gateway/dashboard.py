"""The pages the gateway serves to browsers: the dashboard under /ui and the API
reference under /docs, both from files that ship inside the package.

Air-gapped clusters reach no CDN, so FastAPI's default /docs (Swagger UI from
jsdelivr) renders blank there; the same Swagger UI release is vendored by `make
ui-vendor` and served from /ui/vendor. The dashboard is static: it holds no server-side
state and calls the public APIs with the user's key, so this module only serves files
and sets the headers that keep a key in a browser tab safe (a strict Content Security
Policy: scripts from this origin only, no framing).
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UI_PATH = "/ui"
DOCS_PATH = "/docs"
STATIC = Path(str(resources.files("tuneforge") / "ui" / "static"))
SWAGGER = f"{UI_PATH}/vendor/swagger-ui-dist"

_IMPORT_MAP = re.compile(r'<script type="importmap">(.*?)</script>', re.DOTALL)


def inline_script_hashes(html: str) -> list[str]:
    """CSP source expressions for the page's import map, the one inline script the
    dashboard needs (ES modules resolve the libraries' bare `preact` imports through it)."""
    return [f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in _IMPORT_MAP.findall(html)]


def content_security_policy(script_hashes: list[str]) -> str:
    """Scripts and connections from this origin only; uPlot and Swagger UI set inline
    styles; no page may frame the dashboard (clickjacking of its buttons)."""
    scripts = " ".join(["'self'", *script_hashes])
    return ("default-src 'self'; "
            f"script-src {scripts}; "
            "style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; "
            "connect-src 'self'; "
            "frame-ancestors 'none'; "
            "base-uri 'none'; "
            "form-action 'none'")


class SecurityHeaders:
    """Pure ASGI middleware for /ui: the CSP plus no-sniff and no-referrer (a job id in a
    URL is not for third parties)."""

    def __init__(self, app: ASGIApp, policy: str) -> None:
        self.app = app
        self.headers = [(b"content-security-policy", policy.encode()), (b"x-content-type-options", b"nosniff"),
                        (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    """Mounts /ui, serves /docs from the vendored Swagger UI and sends / to the dashboard.
    The app must be created with docs_url=None and redoc_url=None."""
    policy = content_security_policy(inline_script_hashes((STATIC / "index.html").read_text()))
    app.mount(UI_PATH, SecurityHeaders(StaticFiles(directory=STATIC, html=True), policy), name="ui")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API reference",
                                   swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{SWAGGER}/swagger-ui.css",
                                   swagger_favicon_url=f"{UI_PATH}/favicon.svg")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(f"{UI_PATH}/")
