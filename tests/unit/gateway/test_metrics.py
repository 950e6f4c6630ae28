"""The gateway's request metrics: labelled by route template, status and method, and
recorded for streamed responses when they start."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from prometheus_client import REGISTRY

from tuneforge.gateway.metrics import RequestMetrics


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/things/{thing_id}")
    async def thing(thing_id: str) -> dict:
        if thing_id == "missing":
            from fastapi import HTTPException

            raise HTTPException(404)
        return {"id": thing_id}

    @app.post("/v1/stream")
    async def stream() -> StreamingResponse:
        async def chunks():
            yield b"data: 1\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    app.add_middleware(RequestMetrics)
    return app


def _count(route: str, method: str, status: str) -> float:
    return REGISTRY.get_sample_value("tuneforge_gateway_requests_total",
                                     {"route": route, "method": method, "status": status}) or 0.0


async def test_requests_are_counted_by_route_template_not_by_path() -> None:
    before_ok = _count("/v1/things/{thing_id}", "GET", "200")
    before_missing = _count("/v1/things/{thing_id}", "GET", "404")
    before_unmatched = _count("unmatched", "GET", "404")
    before_stream = _count("/v1/stream", "POST", "200")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://gw") as http:
        for thing in ("a", "b", "c"):
            assert (await http.get(f"/v1/things/{thing}")).status_code == 200
        assert (await http.get("/v1/things/missing")).status_code == 404
        assert (await http.get("/nowhere")).status_code == 404
        assert (await http.post("/v1/stream")).text.endswith("[DONE]\n\n")
    assert _count("/v1/things/{thing_id}", "GET", "200") - before_ok == 3
    assert _count("/v1/things/{thing_id}", "GET", "404") - before_missing == 1
    assert _count("unmatched", "GET", "404") - before_unmatched == 1
    assert _count("/v1/stream", "POST", "200") - before_stream == 1
    assert REGISTRY.get_sample_value("tuneforge_gateway_request_duration_seconds_count",
                                     {"route": "/v1/stream", "method": "POST"}) >= 1
