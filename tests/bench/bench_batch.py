"""Batch runner benchmark: throughput against a plain asyncio+httpx loop, and peak memory.

    .venv/bin/python -m tests.bench.bench_batch      (from the repository root)

1. Requests/s of `run_batch` (validation, journal, progress and publishing included) vs a
   plain loop of `concurrency` asyncio tasks posting the same request bodies with one
   httpx client, at concurrency 1, 8 and 64 and upstream latency 0 and 50 ms. Both run in
   this process, one after the other, against the same upstream in its own process.
   Target: ratio >= 0.95. Each side is measured twice and the better run kept, which
   damps noise from other work on a shared machine.
2. Peak RSS of the runner process (`tuneforge-batch`, via wait4) for inputs of 1,000 and
   50,000 lines. Target: flat (50k/1k <= 1.2) and under 200 MB.

Writes bench-results/batch.json: a list of {metric, value, unit, baseline, baseline_value,
ratio, target, meets_target} plus the machine description.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tuneforge.config import settings
from tuneforge_inference.batch.runner import run_batch

from tests.support.batches import API_KEY, BatchFiles, request_line
from tests.support.openai_upstream import REPO_ROOT, UpstreamConfig, serve_in_subprocess

LATENCIES_MS = (0, 50)
CONCURRENCIES = (1, 8, 64)
RSS_SIZES = (1_000, 50_000)


def _n_requests(latency_ms: int, concurrency: int) -> int:
    """Enough requests for ~2-4 s per measurement on a small machine."""
    if latency_ms == 0:
        return 400
    return min(40 * concurrency, 1500)


async def _plain_loop(base_url: str, input_path: Path, concurrency: int) -> float:
    """The baseline: what one would write by hand, without journal, retries or progress."""
    bodies = [json.loads(line)["body"] for line in input_path.read_text().splitlines()]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        pending = iter(bodies)

        async def worker() -> None:
            for body in pending:
                response = await client.post(f"{base_url}/chat/completions", json=body)
                response.raise_for_status()
                response.json()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(bodies) / (time.perf_counter() - started)


async def _runner(base_url: str, batch: BatchFiles, concurrency: int, n: int) -> float:
    spec = batch.spec(base_url, concurrency=concurrency)
    started = time.perf_counter()
    status = await run_batch(spec)
    elapsed = time.perf_counter() - started
    assert status == "completed" and batch.progress()["request_counts"]["completed"] == n
    return n / elapsed


def _throughput(workdir: Path) -> list[dict[str, Any]]:
    results = []
    for latency_ms in LATENCIES_MS:
        with serve_in_subprocess(UpstreamConfig(latency_s=latency_ms / 1000)) as upstream:
            for concurrency in CONCURRENCIES:
                n = _n_requests(latency_ms, concurrency)
                runner_best = baseline_best = 0.0
                for attempt in range(2):
                    batch = BatchFiles(workdir / f"tp-{latency_ms}-{concurrency}-{attempt}")
                    batch.root.mkdir(parents=True)
                    batch.write_input([request_line(f"r{i}") for i in range(n)])
                    baseline_best = max(baseline_best, asyncio.run(_plain_loop(upstream.base_url, batch.input_path, concurrency)))
                    runner_best = max(runner_best, asyncio.run(_runner(upstream.base_url, batch, concurrency, n)))
                ratio = runner_best / baseline_best
                results.append(
                    {
                        "metric": f"requests_per_s latency={latency_ms}ms concurrency={concurrency}",
                        "value": round(runner_best, 1),
                        "unit": "req/s",
                        "baseline": "plain asyncio+httpx loop",
                        "baseline_value": round(baseline_best, 1),
                        "ratio": round(ratio, 3),
                        "target": ">= 0.95",
                        "meets_target": ratio >= 0.95,
                    }
                )
                print(results[-1], flush=True)
    return results


def _peak_rss_mb(workdir: Path, base_url: str, lines: int) -> float:
    batch = BatchFiles(workdir / f"rss-{lines}")
    batch.root.mkdir(parents=True)
    batch.write_input([request_line(f"r{i}", f"question {i} " + "padding " * 40) for i in range(lines)])
    spec_path = batch.write_spec(batch.spec(base_url, concurrency=64))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge_inference.batch", "--run", str(spec_path)], cwd=REPO_ROOT
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0 and batch.progress()["request_counts"]["completed"] == lines
    return usage.ru_maxrss / 1024  # Linux reports KiB


def _memory(workdir: Path) -> list[dict[str, Any]]:
    with serve_in_subprocess(UpstreamConfig()) as upstream:
        small, large = (_peak_rss_mb(workdir, upstream.base_url, n) for n in RSS_SIZES)
    ratio = large / small
    return [
        {
            "metric": f"peak_rss {RSS_SIZES[1]} lines",
            "value": round(large, 1),
            "unit": "MB",
            "baseline": f"peak_rss {RSS_SIZES[0]} lines",
            "baseline_value": round(small, 1),
            "ratio": round(ratio, 3),
            "target": "ratio <= 1.2 and value < 200 MB",
            "meets_target": ratio <= 1.2 and large < 200,
        }
    ]


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    os.environ["TUNEFORGE_BATCH_API_KEY"] = API_KEY
    settings.cache_clear()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results = _throughput(workdir) + _memory(workdir)
    out = REPO_ROOT / "bench-results" / "batch.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": _machine(), "results": results}, indent=1) + "\n")
    print(json.dumps(results[-1]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
