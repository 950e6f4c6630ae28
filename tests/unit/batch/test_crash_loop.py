"""Crash-loop detection with real processes: an upstream whose answer to one request
SIGKILLs the runner (as an answer too large for its memory would), and the runner rerun
after each death, as the Job does. The batch completes within CRASH_LIMIT + 1 runs with
that request failed as `runner_crashed` and every other one answered exactly once; and a
clean SIGTERM exit charges nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import fsspec
import pytest

from tests.support.batches import request_line, wait_for
from tests.support.openai_upstream import Step
from tests.support.s3 import new_bucket
from tuneforge_inference.batch.crashes import CRASH_LIMIT
from tuneforge_inference.batch.journal import Journal
from tuneforge_inference.batch.runner import Interrupted, RunnerTuning, run_batch

POISON = "the answer that kills"


def _run_until_done(command: list[str], upstream, env_of_run: Callable[[int], dict[str, str] | None]) -> int:
    """Reruns the runner after each death, as the Job does; returns how many runs it took."""
    for run in range(1, CRASH_LIMIT + 2):
        proc = subprocess.Popen(command, env=env_of_run(run), stderr=subprocess.PIPE)
        upstream.app.config.kill_pid_on = {POISON: proc.pid}
        _, stderr = proc.communicate(timeout=120)
        upstream.app.config.kill_pid_on = {}
        if proc.returncode == 0:
            return run
        assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    raise AssertionError(f"the batch did not complete within {CRASH_LIMIT + 1} runs")


def _assert_culprit_isolated(output: list[dict], errors: list[dict], ids: list[str], poisoned: str, upstream):
    [error] = errors
    assert error["custom_id"] == poisoned and error["response"] is None
    assert error["error"]["code"] == "runner_crashed"
    assert f"died {CRASH_LIMIT} times" in error["error"]["message"]
    assert Counter(line["custom_id"] for line in output) == Counter(i for i in ids if i != poisoned)
    stats = upstream.stats()
    assert stats["attempts"][POISON] == CRASH_LIMIT, "the culprit is not sent after its last death"
    # Every death after the first happened with the culprit alone in flight.
    assert stats["others_in_flight"][POISON][1:] == [0] * (CRASH_LIMIT - 1)


def test_a_request_that_kills_the_runner_is_failed_and_the_rest_complete(batch, upstream):
    upstream.app.config.latency_s = 0.2
    ids = [f"req-{i:03d}" for i in range(40)]
    poisoned = ids[17]
    batch.write_input([request_line(i, POISON if i == poisoned else f"content of {i}") for i in ids])
    spec_path = batch.write_spec(batch.spec(upstream, concurrency=4))
    command = [sys.executable, "-m", "tuneforge_inference.batch", "--run", str(spec_path)]

    assert _run_until_done(command, upstream, lambda run: None) == CRASH_LIMIT + 1

    _assert_culprit_isolated(batch.lines("output.jsonl"), batch.lines("errors.jsonl"), ids, poisoned, upstream)
    # The first death had company: those innocents were charged too, then answered alone.
    assert upstream.stats()["others_in_flight"][POISON][0] > 0
    progress = batch.progress()
    assert progress["status"] == "completed"
    assert progress["request_counts"] == {"total": 40, "completed": 39, "failed": 1}


def test_on_an_object_store_the_crash_count_survives_each_new_pod(batch, upstream, s3_endpoint, tmp_path):
    fs = fsspec.filesystem("s3")
    bucket = new_bucket("tuneforge-batch-crash-loop")
    ids = [f"req-{i:03d}" for i in range(12)]
    poisoned = ids[2]
    batch.write_input([request_line(i, POISON if i == poisoned else f"content of {i}") for i in ids])
    fs.put_file(str(batch.input_path), f"{bucket}/input.jsonl")
    out = f"{bucket}/team-a/batches/{batch.batch_id}"
    spec = batch.spec(upstream, input_uri=f"{bucket}/input.jsonl", output_uri=out, store_root=bucket,
                      concurrency=4)
    command = [sys.executable, "-m", "tuneforge_inference.batch", "--run", str(batch.write_spec(spec))]
    upstream.app.config.latency_s = 0.05
    # The first time in flight for longer than a tick, so that the in-flight set uploaded
    # at a tick holds it when it kills the runner in the concurrent phase; afterwards it
    # kills at once, and only the upload before each solo send can record it. No journal
    # snapshot is due in any run, so the charges cross Pods only through the snapshot
    # taken after they are counted.
    upstream.app.config.scripts = {POISON: [Step(delay_s=2.0)]}
    def new_pod(run: int) -> dict[str, str]:
        return {**os.environ, "TUNEFORGE_CACHE_DIR": str(tmp_path / f"pod-{run}")}

    assert _run_until_done(command, upstream, new_pod) <= CRASH_LIMIT + 1

    fs.invalidate_cache()
    output = [json.loads(line) for line in fs.cat_file(f"{out}/output.jsonl").decode().splitlines()]
    errors = [json.loads(line) for line in fs.cat_file(f"{out}/errors.jsonl").decode().splitlines()]
    _assert_culprit_isolated(output, errors, ids, poisoned, upstream)
    progress = json.loads(fs.cat_file(f"{out}/progress.json"))
    assert progress["request_counts"] == {"total": 12, "completed": 11, "failed": 1}


async def test_requests_abandoned_at_sigterm_are_not_charged_a_crash(batch, upstream):
    upstream.app.config.latency_s = 2.0
    batch.write_input([request_line(f"r{i}") for i in range(20)])
    spec = batch.spec(upstream, concurrency=4, cancel_grace_s=0.1)
    run = asyncio.create_task(run_batch(spec, RunnerTuning(tick_s=0.05)))
    await wait_for(lambda: upstream.app.requests >= 4)
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(Interrupted):
        await run

    journal = Journal(batch.batch_dir / "journal")
    assert journal.died_in_flight == [] and journal.state.crashes == {}
    journal.close()
