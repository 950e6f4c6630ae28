"""The smallest chat proxies: the floors under the gateway's figures.

    python -m tests.bench.bare_proxy <port> <upstream base URL ending in /v1> fastapi|asgi

One route, `POST /v1/chat/completions`, that reads the body and posts it to the upstream
with one pooled aiohttp session, and returns the upstream's answer (relayed chunk by chunk
when it is a stream), served by uvicorn as the gateway is (uvloop, httptools, no access
log). No authentication, validation, routing, request ids, metrics or logging:

- `fastapi`: a FastAPI route, what any FastAPI proxy pays, so the gateway's added
  latency minus this one's is what tuneforge itself adds;
- `asgi`: a bare ASGI application, what uvicorn and aiohttp alone cost, so this one's
  added latency subtracted from the FastAPI proxy's is what the framework costs.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024, keepalive_timeout=2.0))


def fastapi_app(upstream: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _session() as http:
            app.state.http = http
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await request.body()
        answer = await request.app.state.http.post(f"{upstream}/chat/completions", data=raw,
                                                   headers={"content-type": "application/json"})
        media_type = answer.headers.get("content-type", "application/json")
        if media_type.startswith("text/event-stream"):
            return StreamingResponse(answer.content.iter_any(), status_code=answer.status, media_type=media_type,
                                     background=BackgroundTask(answer.release))
        content = await answer.read()
        answer.release()
        return Response(content, status_code=answer.status, media_type=media_type)

    return app


class AsgiProxy:
    """The same proxy with no framework (lifespan for the session, 404 for other paths)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.http: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["path"] != "/v1/chat/completions":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        else:
            await self._proxy(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.http = _session()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.http.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(self, receive: Receive, send: Send) -> None:
        body = []
        while True:
            message = await receive()
            body.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        answer = await self.http.post(f"{self.upstream}/chat/completions", data=b"".join(body),
                                      headers={"content-type": "application/json"})
        media_type = answer.headers.get("content-type", "application/json")
        headers = [(b"content-type", media_type.encode("latin-1"))]
        if media_type.startswith("text/event-stream"):
            await send({"type": "http.response.start", "status": answer.status, "headers": headers})
            async for chunk in answer.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            content = await answer.read()
            headers.append((b"content-length", str(len(content)).encode("latin-1")))
            await send({"type": "http.response.start", "status": answer.status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
        answer.release()


def main() -> None:
    port, upstream, framework = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    app = fastapi_app(upstream) if framework == "fastapi" else AsgiProxy(upstream)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", proxy_headers=True, access_log=False)


if __name__ == "__main__":
    main()
