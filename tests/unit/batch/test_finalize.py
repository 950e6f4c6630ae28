"""Finalize-only runs: with the controller's `finalize` marker in the batch directory the
runner sends nothing, publishes what its journal holds and ends the batch as the marker
says, exactly once even when it is killed halfway and run again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tuneforge.contracts import BatchFinalize, ErrorInfo

from tests.support.batches import request_line, wait_for
from tuneforge_inference.batch.runner import Interrupted, RunnerTuning, run_batch

TICK = RunnerTuning(tick_s=0.05)
GAVE_UP = ErrorInfo(code="retries_exhausted", message="the runner failed 6 times in a row")


async def _run_partway(batch, upstream, ids: list[str]) -> set[str]:
    """Runs the batch until some requests are recorded, then stops it as a Pod going away
    would; returns the custom_ids it finished."""
    upstream.app.config.latency_s = 0.05
    batch.write_input([request_line(i) for i in ids])
    run = asyncio.create_task(run_batch(batch.spec(upstream, concurrency=4), TICK))
    await wait_for(lambda: batch.recorded() >= 10)
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(Interrupted):
        await run
    finished = {line["custom_id"] for line in batch.journal_lines("output.jsonl")}
    assert 10 <= len(finished) < len(ids)
    return finished


async def test_failed_marker_publishes_what_finished_and_fails_the_rest(batch, upstream, monkeypatch):
    ids = [f"r{i}" for i in range(60)]
    finished = await _run_partway(batch, upstream, ids)
    sent = upstream.stats()["requests"]
    batch.write_finalize_marker(BatchFinalize(status="failed", error=GAVE_UP))
    # It sends nothing, so a missing key (perhaps why the batch could not finish) is no obstacle.
    monkeypatch.delenv("TUNEFORGE_BATCH_API_KEY")

    assert await run_batch(batch.spec(upstream), TICK) == "failed"

    assert upstream.stats()["requests"] == sent
    output, errors = batch.lines("output.jsonl"), batch.lines("errors.jsonl")
    assert {line["custom_id"] for line in output} == finished
    assert Counter(line["custom_id"] for line in output + errors) == Counter(ids)
    for line in errors:
        assert line["response"] is None and line["error"]["code"] == "batch_failed"
        assert "before this request was executed" in line["error"]["message"]
        assert GAVE_UP.code in line["error"]["message"] and GAVE_UP.message in line["error"]["message"]
    progress = batch.progress()
    assert progress["status"] == "failed" and progress["failed_at"]
    assert [(e["code"], e["message"]) for e in progress["errors"]] == [(GAVE_UP.code, GAVE_UP.message)]
    assert progress["request_counts"] == {"total": 60, "completed": len(finished), "failed": 60 - len(finished)}
    assert (progress["output_file_id"], progress["error_file_id"]) == ("file-out", "file-err")
    assert (batch.file_dir("file-err") / "content").read_bytes() == (batch.batch_dir / "errors.jsonl").read_bytes()


async def test_expired_marker_before_validation_counts_every_request_of_the_input(batch, upstream):
    ids = [f"r{i}" for i in range(25)]
    batch.write_input([request_line(i) for i in ids])
    expired = ErrorInfo(code="batch_expired", message="the runner did not finish within the completion window")
    batch.write_finalize_marker(BatchFinalize(status="expired", error=expired))

    assert await run_batch(batch.spec(upstream), TICK) == "expired"

    assert upstream.stats()["requests"] == 0
    errors = batch.lines("errors.jsonl")
    assert Counter(line["custom_id"] for line in errors) == Counter(ids)
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    progress = batch.progress()
    assert progress["status"] == "expired" and progress["expired_at"] and progress["errors"] == []
    assert progress["request_counts"] == {"total": 25, "completed": 0, "failed": 25}


async def test_cancelled_marker_leaves_unfinished_requests_out(batch, upstream):
    ids = [f"r{i}" for i in range(60)]
    finished = await _run_partway(batch, upstream, ids)
    gone = ErrorInfo(code="cancel_grace_exceeded", message="the runner did not stop within the grace period")
    batch.write_finalize_marker(BatchFinalize(status="cancelled", error=gone))

    assert await run_batch(batch.spec(upstream), TICK) == "cancelled"

    assert {line["custom_id"] for line in batch.lines("output.jsonl")} == finished
    assert batch.lines("errors.jsonl") == []
    progress = batch.progress()
    assert progress["status"] == "cancelled" and progress["cancelled_at"] and progress["errors"] == []
    assert progress["request_counts"] == {"total": 60, "completed": len(finished), "failed": 0}
    assert progress["error_file_id"] is None


async def test_an_end_decided_before_the_marker_is_kept(batch, upstream):
    batch.write_input([request_line(f"r{i}") for i in range(10)])
    spec = batch.spec(upstream)
    assert await run_batch(spec, TICK) == "completed"
    published = (batch.batch_dir / "output.jsonl").read_bytes()
    # Killed after publishing, before the final progress.json; the controller gives up.
    (batch.batch_dir / "progress.json").unlink()
    batch.write_finalize_marker(BatchFinalize(status="failed", error=GAVE_UP))

    assert await run_batch(spec, TICK) == "completed"

    assert (batch.batch_dir / "output.jsonl").read_bytes() == published
    assert batch.lines("errors.jsonl") == []
    progress = batch.progress()
    assert progress["errors"] == []
    assert progress["request_counts"] == {"total": 10, "completed": 10, "failed": 0}


def test_a_finalize_only_run_killed_halfway_finishes_exactly_once_when_rerun(batch, upstream):
    n = 20_000
    ids = [f"req-{i:05d}" for i in range(n)]
    batch.write_input([request_line(i) for i in ids])
    batch.write_finalize_marker(BatchFinalize(status="failed", error=GAVE_UP))
    command = [sys.executable, "-m", "tuneforge_inference.batch", "--run", str(batch.write_spec(batch.spec(upstream)))]

    proc = subprocess.Popen(command)
    deadline = time.monotonic() + 60
    while batch.recorded("errors.jsonl") == 0:
        assert proc.poll() is None and time.monotonic() < deadline, "the finalize-only run ended unseen"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < batch.recorded("errors.jsonl") < n, "the kill did not land while error lines were written"
    assert json.loads((batch.batch_dir / "journal" / "state.json").read_text())["final"] == "failed"
    assert batch.progress()["status"] == "validating"

    assert subprocess.run(command, timeout=120).returncode == 0

    errors = batch.lines("errors.jsonl")
    assert Counter(line["custom_id"] for line in errors) == Counter(ids)
    assert {line["error"]["code"] for line in errors} == {"batch_failed"}
    progress = batch.progress()
    assert progress["status"] == "failed"
    assert progress["request_counts"] == {"total": n, "completed": 0, "failed": n}
    assert upstream.stats()["requests"] == 0
