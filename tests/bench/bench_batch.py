"""Batch runner benchmark: throughput against a plain asyncio+httpx loop, and peak memory.

    .venv/bin/python -m tests.bench.bench_batch [--quick]      (or: make bench-batch)

1. Requests/s of `run_batch` (validation, journal, progress and publishing included) vs a
   plain loop of `concurrency` asyncio tasks posting the same (already parsed) request
   bodies with one httpx client, at concurrency 1, 8 and 64 and upstream latency 0 and
   50 ms. Target: ratio >= 0.95. Reported beside it, with no target: the same loop on
   aiohttp, the runner's own client, which isolates what the runner's own work costs.
   All run in this process, one after the other, against the same upstream in its own
   process. Each side is measured twice and the better run kept, which damps noise from
   other work on a shared machine.
2. Peak RSS of the runner process (`tuneforge-batch`, its VmHWM) for inputs of 1,000 and
   50,000 lines. Target: flat (50k/1k <= 1.2) and under 200 MB.

`--quick` (or TUNEFORGE_BENCH_QUICK=1) runs every combination with a tenth of the requests,
one attempt each, and 500 vs 5,000 lines: a smoke run, not figures to quote.

Writes bench-results/batch.json: a list of {metric, value, unit, baseline, baseline_value,
ratio, target, meets_target} plus the machine description.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from tuneforge.config import settings

from tests.bench import common
from tests.support.batches import API_KEY, BatchFiles, request_line
from tests.support.openai_upstream import REPO_ROOT, UpstreamConfig, serve_in_subprocess
from tuneforge_inference.batch.runner import run_batch

LATENCIES_MS = (0, 50)
CONCURRENCIES = (1, 8, 64)
RSS_SIZES = (500, 5_000) if common.quick() else (1_000, 50_000)
ATTEMPTS = 1 if common.quick() else 2


def _n_requests(latency_ms: int, concurrency: int) -> int:
    """Enough requests for ~2-4 s per measurement on a small machine (a tenth when quick)."""
    n = 2000 if latency_ms == 0 else min(40 * concurrency, 1500)
    return max(n // 10, concurrency) if common.quick() else n


async def _plain_httpx_loop(base_url: str, bodies: list[dict[str, Any]], concurrency: int) -> float:
    """The issue's baseline: what one would write by hand, without journal, retries or
    progress, on httpx (the client most Python code, the openai SDK's included, is built on)."""
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


async def _plain_aiohttp_loop(base_url: str, bodies: list[dict[str, Any]], concurrency: int) -> float:
    """The same loop on the runner's own client, aiohttp: what the runner's journal,
    retries and progress cost on top of its HTTP."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        pending = iter(bodies)

        async def worker() -> None:
            for body in pending:
                async with client.post(f"{base_url}/chat/completions", json=body) as response:
                    response.raise_for_status()
                    json.loads(await response.read())

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
                best = {"runner": 0.0, "httpx": 0.0, "aiohttp": 0.0}
                for attempt in range(ATTEMPTS):
                    batch = BatchFiles(workdir / f"tp-{latency_ms}-{concurrency}-{attempt}")
                    batch.root.mkdir(parents=True)
                    batch.write_input([request_line(f"r{i}") for i in range(n)])
                    bodies = [json.loads(line)["body"] for line in batch.input_path.read_text().splitlines()]
                    measured = {
                        "httpx": asyncio.run(_plain_httpx_loop(upstream.base_url, bodies, concurrency)),
                        "aiohttp": asyncio.run(_plain_aiohttp_loop(upstream.base_url, bodies, concurrency)),
                        "runner": asyncio.run(_runner(upstream.base_url, batch, concurrency, n)),
                    }
                    best = {side: max(best[side], value) for side, value in measured.items()}
                name = f"requests_per_s latency={latency_ms}ms concurrency={concurrency}"
                results.append(common.result(
                    name, best["runner"], "req/s", "plain asyncio+httpx loop", best["httpx"],
                    "ratio >= 0.95", best["runner"] / best["httpx"] >= 0.95,
                ))
                results.append(common.result(
                    f"{name} vs the runner's own client", best["runner"], "req/s", "plain asyncio+aiohttp loop",
                    best["aiohttp"], "reported (no target)", True,
                ))
                print(results[-2], results[-1], sep="\n", flush=True)
    return results


_REPORT_PEAK = """
import sys
from pathlib import Path
from tuneforge_inference.batch.__main__ import main
code = main(sys.argv[1:])
peak = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
Path(sys.argv[-1] + ".peak").write_text(peak.split()[1])
sys.exit(code)
"""
"""Runs `tuneforge-batch` and records the process's own peak (VmHWM, in KiB) when it is
done. Not wait4's ru_maxrss: that survives exec, so it would include the pages of this
benchmark process at fork time, which hold the generated input and grow with it."""


def _peak_rss_mb(workdir: Path, base_url: str, lines: int) -> float:
    batch = BatchFiles(workdir / f"rss-{lines}")
    batch.root.mkdir(parents=True)
    batch.write_input([request_line(f"r{i}", f"question {i} " + "padding " * 40) for i in range(lines)])
    spec_path = batch.write_spec(batch.spec(base_url, concurrency=64))
    subprocess.run([sys.executable, "-c", _REPORT_PEAK, "--run", str(spec_path)], cwd=REPO_ROOT, check=True)
    assert batch.progress()["request_counts"]["completed"] == lines
    return int(Path(f"{spec_path}.peak").read_text()) / 1024


def _memory(workdir: Path) -> list[dict[str, Any]]:
    with serve_in_subprocess(UpstreamConfig()) as upstream:
        small, large = (_peak_rss_mb(workdir, upstream.base_url, n) for n in RSS_SIZES)
    return [common.result(
        f"peak_rss {RSS_SIZES[1]} lines", large, "MB", f"peak_rss {RSS_SIZES[0]} lines", small,
        "ratio <= 1.2 and value < 200 MB", large / small <= 1.2 and large < 200,
    )]


def main() -> None:
    os.environ["TUNEFORGE_BATCH_API_KEY"] = API_KEY
    settings.cache_clear()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results = _throughput(workdir) + _memory(workdir)
    common.write("batch", results)


if __name__ == "__main__":
    main()
