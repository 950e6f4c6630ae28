"""The gateway's request metrics: labelled by route template, status and method, and
recorded for streamed responses when they start; its access log, written once the
response has been sent."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from prometheus_client import REGISTRY
from uvicorn.logging import AccessFormatter

from tuneforge.gateway.app import log_config
from tuneforge.gateway.metrics import ACCESS_LOG, RequestTelemetry


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

    app.add_middleware(RequestTelemetry)
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


class _Timeline(logging.Handler):
    """Access log lines and sent ASGI messages, in the order they happened."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(record.getMessage())

    async def send(self, message: dict) -> None:
        self.events.append(message["type"])


@pytest.fixture
def timeline():
    recorder = _Timeline()
    ACCESS_LOG.addHandler(recorder)
    level = ACCESS_LOG.level
    ACCESS_LOG.setLevel(logging.INFO)
    yield recorder
    ACCESS_LOG.removeHandler(recorder)
    ACCESS_LOG.setLevel(level)


_SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"a=1",
          "http_version": "1.1", "client": ("10.0.0.7", 5000), "headers": []}


async def _never() -> dict:
    raise AssertionError("the app reads no body")


async def test_the_access_line_is_written_once_the_response_has_been_sent(timeline) -> None:
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    await RequestTelemetry(app)(dict(_SCOPE), _never, timeline.send)
    assert timeline.events == ["http.response.start", "http.response.body",
                               '10.0.0.7:5000 - "POST /v1/chat/completions?a=1 HTTP/1.1" 201']


async def test_an_app_that_fails_before_responding_is_logged_as_a_500(timeline) -> None:
    async def app(scope, receive, send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await RequestTelemetry(app)(dict(_SCOPE), _never, timeline.send)
    assert timeline.events == ['10.0.0.7:5000 - "POST /v1/chat/completions?a=1 HTTP/1.1" 500']


def test_the_served_gateway_formats_its_access_lines_as_uvicorn_does() -> None:
    config = log_config()
    assert config["loggers"][ACCESS_LOG.name] == config["loggers"]["uvicorn.access"]
    access = AccessFormatter(config["formatters"]["access"]["fmt"], use_colors=False)
    record = ACCESS_LOG.makeRecord(ACCESS_LOG.name, logging.INFO, __file__, 0, '%s - "%s %s HTTP/%s" %d',
                                   ("10.0.0.7:5000", "GET", "/v1/models", "1.1", 404), None)
    assert access.format(record) == 'INFO:     10.0.0.7:5000 - "GET /v1/models HTTP/1.1" 404 Not Found'
