"""The smallest FastAPI + aiohttp chat proxy: the framework floor under the gateway's figures.

    python -m tests.bench.bare_proxy <port> <upstream base URL ending in /v1>

One route, `POST /v1/chat/completions`, that reads the body and posts it to the upstream
with one pooled aiohttp session, and returns the upstream's answer (relayed chunk by chunk
when it is a stream), served by uvicorn with the gateway's settings. No authentication,
validation, routing, request ids or metrics: what is left is what any FastAPI proxy pays,
so the gateway's added latency minus this one's is what tuneforge itself adds.
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


def create_app(upstream: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024, keepalive_timeout=2.0)) as http:
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


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(create_app(upstream), host="127.0.0.1", port=port, log_level="info", proxy_headers=True)


if __name__ == "__main__":
    main()
