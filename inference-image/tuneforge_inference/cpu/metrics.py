"""Prometheus metrics of the CPU engine.

Where vLLM has a metric with the same meaning the CPU engine uses vLLM's name (queue
depth, token counters, end-to-end latency), so dashboards and adapter-aware routing read
both engines alike; the rest carry a `tuneforge_` prefix. Each engine gets its own
registry, so several engines in one process (tests, benchmarks) never collide.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class EngineMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        waiting: Callable[[], int],
        running: Callable[[], int],
        resident_adapters: Callable[[], int],
        known_adapters: Callable[[], int],
        adapter_loads: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tuneforge_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "tuneforge_requests_rejected_queue_full",
            "Chat requests refused with 429 because the queue was full.",
            registry=self.registry,
        )
        self.latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end latency of chat completions.",
            ["model_name"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed.", ["model_name"], registry=self.registry
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated.", ["model_name"], registry=self.registry
        )
        Gauge("vllm:num_requests_waiting", "Requests waiting in the queue.", registry=self.registry).set_function(
            waiting
        )
        Gauge("vllm:num_requests_running", "Requests being generated.", registry=self.registry).set_function(running)
        Gauge(
            "tuneforge_loaded_adapters", "LoRA adapters resident in the model.", registry=self.registry
        ).set_function(resident_adapters)
        Gauge(
            "tuneforge_registered_adapters", "LoRA adapters the server serves (loaded on demand).", registry=self.registry
        ).set_function(known_adapters)
        self.registry.register(_AdapterLoads(adapter_loads))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _AdapterLoads(Collector):
    """`tuneforge_adapter_loads_total`: adapters brought into the model, the first time or
    again after an eviction. Rising under steady traffic means adapters thrash: more
    adapters in rotation on this replica than it holds (maxAdapters), or routing that
    ignores which replica holds which."""

    def __init__(self, loads: Callable[[], int]) -> None:
        self.loads = loads

    def collect(self):
        yield CounterMetricFamily("tuneforge_adapter_loads", "LoRA adapters made resident in the model.",
                                  value=self.loads())
