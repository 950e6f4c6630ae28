"""Exactly-once under SIGKILL: the runner is killed at random moments (start-up,
validation, mid-execution) many times over one batch and restarted with the
same spec each time; in the end every custom_id has exactly one result line.

Half the kills are timed from the process start, so they may land anywhere; the
other half wait for the run to record a result first, so they land mid-execution
however long start-up takes on a loaded machine."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

from tests.support.batches import request_line

KILLS = 20
N = 400


def _recorded(batch) -> int:
    path = batch.batch_dir / "journal" / "output.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _wait_for_a_new_result(batch, proc: subprocess.Popen, recorded_before: int) -> None:
    deadline = time.monotonic() + 120
    while _recorded(batch) <= recorded_before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def test_sigkill_at_random_moments_then_finish_exactly_once(batch, upstream):
    seed = int(os.environ.get("BATCH_CRASH_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    upstream.app.config.latency_s = 0.1
    ids = [f"req-{i:05d}" for i in range(N)]
    batch.write_input([request_line(i, f"content of {i}") for i in ids])
    spec_path = batch.write_spec(batch.spec(upstream, concurrency=2))
    command = [sys.executable, "-m", "tuneforge_inference.batch", "--run", str(spec_path)]

    kills = 0
    recorded: list[int] = []
    while kills < KILLS:
        recorded_before = _recorded(batch)
        proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        if kills % 2:
            _wait_for_a_new_result(batch, proc, recorded_before)
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            time.sleep(rng.uniform(0.1, 2.5))
        assert proc.poll() is None, f"the batch finished after {kills} kills (seed {seed}); make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        recorded.append(_recorded(batch))

    # The kills hit the execution phase, not only start-up.
    assert 0 < max(recorded) < N, f"seed {seed}: recorded {recorded}"
    upstream.app.config.latency_s = 0.0
    assert subprocess.run(command, stderr=subprocess.DEVNULL, timeout=120).returncode == 0, f"seed {seed}"

    output, errors = batch.lines("output.jsonl"), batch.lines("errors.jsonl")
    # Kills that land CRASH_LIMIT times on one request, alone in flight after the first,
    # are indistinguishable from a crash loop: such a request is failed, and only such.
    assert {line["error"]["code"] for line in errors} <= {"runner_crashed"}, f"seed {seed}"
    assert Counter(line["custom_id"] for line in output + errors) == Counter(ids), f"seed {seed}"
    for line in output:
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"echo: content of {line['custom_id']}"
    progress = batch.progress()
    assert progress["status"] == "completed"
    assert progress["request_counts"] == {"total": N, "completed": len(output), "failed": len(errors)}
    # Requests in flight at a kill were sent again, and yet recorded once.
    assert upstream.stats()["requests"] >= N
