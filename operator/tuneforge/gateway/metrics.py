"""Prometheus metrics of the gateway, served on their own port
(`TUNEFORGE_GATEWAY_METRICS_PORT`, 0 disables) so the public API port does not expose them.

- `tuneforge_gateway_requests_total{route,method,status}`: responses by route and status;
- `tuneforge_gateway_request_duration_seconds{route,method}`: time until the response
  starts (for a streamed chat completion: until its headers, i.e. the upstream answered).

Routing and scaling from zero (`routing`, `held`):

- `tuneforge_gateway_in_flight_requests{model}`: chat requests being served, per model;
- `tuneforge_gateway_held_requests{namespace,deployment}`: requests waiting for a replica
  of a deployment scaling up from zero, and `tuneforge_gateway_queue_wait_seconds` how
  long they waited;
- `tuneforge_gateway_adapter_events_total{event}`: per request `hit` (the chosen replica
  held the adapter) or `miss`; per engine call `load` and `eviction`;
- `tuneforge_gateway_routing_decisions_total{decision}`: `affinity` (a replica holding the
  adapter), `spread` (a hot adapter to one more replica), `least_loaded`, `round_robin`.

Listing (`listing`):

- `tuneforge_gateway_list_cache_objects`: FineTuningJobs and BatchJobs held by the
  watches that serve list requests;
- `tuneforge_gateway_list_reads_total{source}`: list requests answered from the watches
  (`cache`) or by reading the API server (`api`: a namespace's first list, a watch behind
  this replica's own write or failed, a namespace larger than the cache).

`route` is the matched route template (`/v1/batches/{batch_id}`), never the raw path, so
ids cannot grow the label set; requests no route matched count as `unmatched`.

The access log is written here too (`RequestTelemetry`), once each response has been sent.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

REQUESTS = Counter(
    "tuneforge_gateway_requests_total", "Gateway responses by route, method and status.", ["route", "method", "status"]
)
REQUEST_SECONDS = Histogram(
    "tuneforge_gateway_request_duration_seconds",
    "Time until the gateway's response started.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UNMATCHED = "unmatched"

IN_FLIGHT = Gauge("tuneforge_gateway_in_flight_requests", "Chat requests being served, by model.", ["model"])
HELD_REQUESTS = Gauge("tuneforge_gateway_held_requests", "Requests waiting for a deployment to scale up from zero.",
                      ["namespace", "deployment"])
QUEUE_WAIT_SECONDS = Histogram(
    "tuneforge_gateway_queue_wait_seconds",
    "Time requests waited for a deployment to scale up from zero.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
ADAPTER_EVENTS = Counter("tuneforge_gateway_adapter_events_total",
                         "Adapter hits and misses of routed requests, loads and evictions on the engines.", ["event"])
ROUTING_DECISIONS = Counter("tuneforge_gateway_routing_decisions_total", "How chat requests chose their replica.",
                            ["decision"])
LIST_CACHE_OBJECTS = Gauge("tuneforge_gateway_list_cache_objects",
                           "Custom resources held by the watches that serve list requests.")
LIST_READS = Counter("tuneforge_gateway_list_reads_total", "List requests by where they were read from.", ["source"])


@functools.lru_cache(maxsize=4096)
def _request_series(route: str, method: str, status: int) -> tuple[Any, Any]:
    """The request counter's and duration histogram's series for one response kind: a
    label lookup takes prometheus_client's lock and checks every label value, which was
    about 2% of the gateway's CPU on the chat path when done per request. Routes are
    templates, so the set of series is small anyway; the bound is a guard."""
    return REQUESTS.labels(route, method, str(status)), REQUEST_SECONDS.labels(route, method)


ACCESS_LOG = logging.getLogger("tuneforge.gateway.access")
"""Lines in uvicorn's access log format (`app.serve` gives this logger uvicorn's access
formatter and turns uvicorn's own access log off)."""


class RequestTelemetry:
    """Pure ASGI middleware (streams stay streams) that counts and times each response,
    and writes its access log line once the response has been sent. uvicorn writes that
    line before the response's first bytes: 0.1 to 0.15 ms on the latency of every call.
    Starlette's router writes the matched route into the request scope, which this
    middleware shares, so the template is known by the time the response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        status = 500  # what the client gets when the app fails before its response starts

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                responses, seconds = _request_series(getattr(scope.get("route"), "path", UNMATCHED), method, status)
                responses.inc()
                seconds.observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            if ACCESS_LOG.isEnabledFor(logging.INFO):
                ACCESS_LOG.info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope), method,
                                get_path_with_query_string(scope), scope["http_version"], status)
