"""Cancellation (cancel marker, grace period), SIGTERM (which does not cancel) and expiry
at the deadline."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

from tests.support.batches import request_line, wait_for
from tuneforge_inference.batch.runner import RunnerTuning, run_batch

TICK = RunnerTuning(tick_s=0.05)


async def test_cancel_marker_stops_dispatch_and_keeps_partial_results(batch, upstream):
    upstream.app.config.latency_s = 0.1
    batch.write_input([request_line(f"r{i}") for i in range(200)])
    run = asyncio.create_task(run_batch(batch.spec(upstream, concurrency=4), TICK))
    await wait_for(lambda: batch.recorded() >= 8)
    (batch.batch_dir / "cancel").write_text("")
    assert await run == "cancelled"

    progress = batch.progress()
    assert progress["status"] == "cancelled"
    assert progress["cancelling_at"] and progress["cancelled_at"]
    output = batch.lines("output.jsonl")
    counts = progress["request_counts"]
    assert 8 <= counts["completed"] == len(output) < 200
    assert counts["total"] == 200 and counts["failed"] == 0
    assert len({line["custom_id"] for line in output}) == len(output)
    # Within the grace period every request already sent was allowed to finish.
    assert upstream.stats()["requests"] == len(output)
    assert (batch.file_dir("file-out") / "content").read_bytes() == (batch.batch_dir / "output.jsonl").read_bytes()


async def test_in_flight_requests_are_abandoned_after_the_grace_period(batch, upstream):
    upstream.app.config.latency_s = 2.0
    batch.write_input([request_line(f"r{i}") for i in range(20)])
    run = asyncio.create_task(run_batch(batch.spec(upstream, concurrency=4, cancel_grace_s=0.2), TICK))
    await wait_for(lambda: upstream.app.requests >= 4)
    started = time.monotonic()
    (batch.batch_dir / "cancel").write_text("")
    assert await run == "cancelled"
    assert time.monotonic() - started < 1.5, "cancel waited for the slow requests beyond the grace period"
    assert batch.progress()["request_counts"] == {"total": 20, "completed": 0, "failed": 0}
    assert batch.lines("output.jsonl") == [] and batch.lines("errors.jsonl") == []


def test_sigterm_exits_143_keeping_the_journal_and_a_rerun_resumes(batch, upstream):
    upstream.app.config.latency_s = 0.1
    ids = [f"r{i}" for i in range(300)]
    batch.write_input([request_line(i) for i in ids])
    spec_path = batch.write_spec(batch.spec(upstream, concurrency=4))
    command = [sys.executable, "-m", "tuneforge_inference.batch", "--run", str(spec_path)]
    proc = subprocess.Popen(command)
    deadline = time.monotonic() + 30
    while batch.recorded() < 8:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143

    progress = batch.progress()
    assert progress["status"] == "in_progress", "a Pod going away must not end the batch"
    assert progress["cancelling_at"] is None and progress["cancelled_at"] is None
    kept = batch.recorded()
    assert 8 <= kept == progress["request_counts"]["completed"] < 300
    # In-flight requests finished within the grace period: every request sent has its line.
    assert upstream.stats()["requests"] == kept
    assert not (batch.batch_dir / "output.jsonl").exists(), "nothing is published yet"

    upstream.app.config.latency_s = 0.0
    assert subprocess.run(command, timeout=120).returncode == 0
    assert batch.progress()["status"] == "completed"
    assert Counter(line["custom_id"] for line in batch.lines("output.jsonl")) == Counter(ids)
    assert upstream.stats()["requests"] == 300, "the rerun sent again what was recorded"


async def test_expiry_finalizes_with_unfinished_requests_as_batch_expired(batch, upstream):
    upstream.app.config.latency_s = 0.1
    ids = [f"r{i}" for i in range(100)]
    batch.write_input([request_line(i) for i in ids])
    spec = batch.spec(upstream, concurrency=2, expires_at=datetime.now(timezone.utc) + timedelta(seconds=1.0))
    assert await run_batch(spec, TICK) == "expired"

    progress = batch.progress()
    assert progress["status"] == "expired" and progress["expired_at"]
    output, errors = batch.lines("output.jsonl"), batch.lines("errors.jsonl")
    assert 0 < len(output) < 100
    assert Counter(line["custom_id"] for line in output + errors) == Counter(ids)
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert all(line["response"] is None for line in errors)
    assert progress["request_counts"] == {"total": 100, "completed": len(output), "failed": len(errors)}
    assert progress["error_file_id"] == "file-err"
