"""Serving at scale on the local platform (part of `make bench-inference`): scale from zero
and adapter-aware routing, through the gateway, with CPU engines on the tiny model.

1. Time to first token of a streamed request to a deployment at zero replicas (the gateway
   holds it while the autoscaler starts a replica), vs the same engine's cold start on its
   own (started by hand, until its first response): the platform's own overhead is the
   scaling decision, scheduling, the readiness probe and the gateway's poll.
   Target: ratio <= 2. And a warm replica's time to first token vs from zero, the reason to
   keep minReplicas >= 1 for latency-sensitive models. Target: ratio <= 0.05.
2. Requests/s and p99 latency with adapter-aware routing vs round-robin on the same two
   replicas, each holding at most 2 adapters, with 4 adapters in rotation at concurrency 4
   (the gateway restarted with TUNEFORGE_GATEWAY_ROUTING between runs; two runs each, best
   kept). Target: >= 1.2x requests/s and a lower p99. Also the engines' adapter loads per
   request in each mode (warm-up included; after it, adapter-aware should load none).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.api.v1alpha1.labels import Label
from tuneforge.local.devstack import TINY, DevStack, free_gateway_port

from tests.bench import common

MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]
FROM_ZERO_STARTS = 1 if common.quick() else 3
WARM_REQUESTS = 3 if common.quick() else 10
ROUTED_REQUESTS = 24 if common.quick() else 160
CONCURRENCY = 4


def _wait(what: str, probe: Callable[[], Any], timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)
    return value


class Platform:
    """The local platform with helpers to deploy, observe and load it."""

    def __init__(self, stack: DevStack) -> None:
        self.stack = stack
        self.custom = client.CustomObjectsApi(stack.api_client)
        self.core = client.CoreV1Api(stack.api_client)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.stack.base_url, timeout=600,
                            headers={"authorization": f"Bearer {self.stack.api_key}"})

    def deploy(self, name: str, spec: dict) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.stack.tenant, "modeldeployments", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": self.stack.tenant},
            "spec": {"baseModel": TINY, "engine": "cpu", **spec}})

    def remove(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.stack.tenant, "modeldeployments", name)
        _wait(f"the Pods of {name} to go", lambda: not self.pods(name))

    def pods(self, name: str) -> list:
        return self.core.list_namespaced_pod(self.stack.tenant, label_selector=f"{Label.MODEL_DEPLOYMENT}={name}").items

    def ready_pods(self, name: str) -> list:
        return [pod for pod in self.pods(name)
                if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])]

    def at_zero(self, name: str) -> bool:
        status = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.stack.tenant, "modeldeployments",
                                                          name).get("status") or {}
        return (status.get("autoscaling") or {}).get("desiredReplicas") == 0 and not self.pods(name)

    def restart_gateway(self, routing: str) -> None:
        gateway = self.stack.gateway
        gateway.stop()
        gateway.env["TUNEFORGE_GATEWAY_ROUTING"] = routing
        gateway.start()
        _wait("the gateway", self._gateway_up, timeout=60)

    def _gateway_up(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.stack.gateway_port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def time_to_first_token(http: httpx.Client, model: str) -> float:
    started = time.perf_counter()
    body = {"model": model, "messages": MESSAGES, "max_tokens": 8, "stream": True}
    with http.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    return time.perf_counter() - started
    raise AssertionError("the stream ended without a token")


def bench_scale_from_zero(platform: Platform, adapter: Path, engine_cold_start: float) -> list[dict[str, Any]]:
    name, model = "bench-from-zero", "bench-zero-adapter"
    platform.deploy(name, {"adapters": [{"name": model, "source": f"file://{adapter}"}],
                           "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "targetInFlight": 1,
                                           "windowSeconds": 2, "scaleDownDelaySeconds": 3}})
    try:
        with platform.http() as http:
            from_zero = []
            for _ in range(FROM_ZERO_STARTS):
                _wait("the deployment to scale to zero", lambda: platform.at_zero(name))
                from_zero.append(time_to_first_token(http, model))
            warm = [time_to_first_token(http, model) for _ in range(WARM_REQUESTS)]
    finally:
        platform.remove(name)
    zero_s, warm_s = statistics.median(from_zero), statistics.median(warm)
    return [
        common.result("ttft_from_zero_replicas", zero_s, "s", "cold_engine_start_to_first_response",
                      engine_cold_start, "ratio <= 2", zero_s / engine_cold_start <= 2),
        common.result("ttft_warm_replica", warm_s, "s", "ttft_from_zero_replicas", zero_s, "ratio <= 0.05",
                      warm_s / zero_s <= 0.05),
    ]


def _load(http: httpx.Client, models: list[str]) -> tuple[float, float]:
    """Requests/s and p99 latency (s) of ROUTED_REQUESTS requests rotating over `models`."""
    def one(model: str) -> float:
        started = time.perf_counter()
        response = http.post("/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": 8,
                                                        "temperature": 0, "ignore_eos": True})
        if response.is_error:
            raise RuntimeError(f"{model}: {response.status_code} {response.text}")
        return time.perf_counter() - started

    rotation = [models[i % len(models)] for i in range(ROUTED_REQUESTS)]
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, rotation[:2 * len(models)]))  # adapters placed
        started = time.perf_counter()
        latencies = sorted(pool.map(one, rotation))
        elapsed = time.perf_counter() - started
    return len(rotation) / elapsed, latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]


def engine_adapter_loads(platform: Platform, name: str) -> float:
    """Adapters the deployment's engines made resident so far (tuneforge_adapter_loads_total)."""
    total = 0.0
    for pod in platform.ready_pods(name):
        port = next(p.container_port for c in pod.spec.containers for p in c.ports or [] if p.name == "http")
        text = httpx.get(f"http://{pod.status.pod_ip}:{port}/metrics", timeout=10).text
        total += sum(sample.value for family in text_string_to_metric_families(text)
                     for sample in family.samples if sample.name == "tuneforge_adapter_loads_total")
    return total


def bench_routing(platform: Platform, adapters: list[Path]) -> list[dict[str, Any]]:
    name = "bench-routing"
    models = [f"bench-adapter-{i}" for i in range(len(adapters))]
    platform.deploy(name, {"replicas": 2, "maxAdapters": 2,
                           "adapters": [{"name": m, "source": f"file://{p}"} for m, p in zip(models, adapters)]})
    runs: dict[str, list[tuple[float, float]]] = {"adapter-aware": [], "round-robin": []}
    loads: dict[str, list[float]] = {"adapter-aware": [], "round-robin": []}
    try:
        _wait("two ready replicas", lambda: len(platform.ready_pods(name)) == 2)
        for routing in ["adapter-aware", "round-robin"] * 2:
            platform.restart_gateway(routing)
            with platform.http() as http:
                before = engine_adapter_loads(platform, name)
                runs[routing].append(_load(http, models))
                loads[routing].append(engine_adapter_loads(platform, name) - before)
    finally:
        platform.restart_gateway("adapter-aware")
        platform.remove(name)
    aware_rps, rr_rps = max(r for r, _ in runs["adapter-aware"]), max(r for r, _ in runs["round-robin"])
    aware_p99, rr_p99 = min(p for _, p in runs["adapter-aware"]), min(p for _, p in runs["round-robin"])
    per_request = {routing: min(values) / (ROUTED_REQUESTS + 2 * len(models)) for routing, values in loads.items()}
    return [
        common.result("adapter_loads_per_request_adapter_aware", per_request["adapter-aware"], "loads/req",
                      "round_robin", per_request["round-robin"], "<= 0.05 (95% of requests find their adapter)",
                      per_request["adapter-aware"] <= 0.05),
        common.result("routed_requests_per_second_adapter_aware", aware_rps, "req/s", "round_robin", rr_rps,
                      "ratio >= 1.2", aware_rps / rr_rps >= 1.2),
        common.result("routed_p99_latency_adapter_aware", aware_p99, "s", "round_robin", rr_p99, "ratio < 1",
                      aware_p99 < rr_p99),
    ]


def bench_serving_scale(workdir: Path, adapters: list[Path], engine_cold_start: float) -> list[dict[str, Any]]:
    stack = DevStack(state_dir=workdir / "dev", gateway_port=free_gateway_port(), models=(TINY,), poll_interval=1.0,
                     autoscale_interval=1.0)
    with stack:
        platform = Platform(stack)
        return [*bench_scale_from_zero(platform, adapters[0], engine_cold_start), *bench_routing(platform, adapters)]
