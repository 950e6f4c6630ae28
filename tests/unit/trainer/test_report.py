"""The trainer's Reporter: events and metrics buffer on the training thread, a background
thread flushes them, a flush costs the same however many steps came before, and nothing
buffered is lost when a flush fails or the failure report takes over."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from tuneforge.jobfiles import COMPACT_FANOUT, EVENTS, METRICS, JobFiles
from tuneforge.storage import ArtifactStore

from tests.support.s3 import new_bucket
from tests.support.s3_requests import recording
from tuneforge_trainer.report import Reporter

PADDING = "x" * 2000
"""Makes each step's lines a few KiB, so that what a flush sends is mostly its lines."""


def record(step: int, **extra) -> dict:
    return {"step": step, "train_loss": 1.0 / step, "train_mean_token_accuracy": 0.5, "learning_rate": 1e-4,
            **extra}


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(f"file://{tmp_path}/out")


def test_events_and_metrics_only_buffer_until_a_flush(store) -> None:
    reporter = Reporter(store, flush_interval_s=3600)
    reporter.event("Training started")
    reporter.metrics(record(1), total_steps=2)
    files = JobFiles(store)
    assert files.events() == [] and files.metrics() == []
    reporter.close()
    assert [e["message"] for e in files.events()] == ["Training started", "Step 1/2: training loss=1.0000"]
    assert [m["step"] for m in files.metrics()] == [1]


def test_the_background_thread_flushes_every_interval(store) -> None:
    reporter = Reporter(store, flush_interval_s=0.05)
    files = JobFiles(store)
    for step in (1, 2, 3):
        reporter.metrics(record(step), total_steps=3)
    wait_until(lambda: len(files.metrics()) == 3)
    reporter.event("later")
    # Metrics and events are two files: the events may still be on their way.
    wait_until(lambda: [event["message"] for event in files.events()][-1:] == ["later"])
    reporter.close()


def test_a_failed_background_flush_is_logged_and_retried(store, tmp_path, caplog) -> None:
    blocker = tmp_path / "out" / EVENTS
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the events log belongs")
    reporter = Reporter(store, flush_interval_s=0.05)
    reporter.event("written once the store recovers")
    with caplog.at_level(logging.WARNING, logger="tuneforge_trainer.report"):
        wait_until(lambda: any("flushing events and metrics failed" in r.message for r in caplog.records))
    reporter.metrics(record(1), total_steps=1)  # the training thread carries on
    blocker.unlink()
    files = JobFiles(store)
    wait_until(lambda: len(files.events()) == 2)
    assert [e["message"] for e in files.events()] == ["written once the store recovers",
                                                      "Step 1/1: training loss=1.0000"]
    reporter.close()


def test_the_failure_report_flushes_what_the_trainer_still_buffers_in_order(store) -> None:
    trainer = Reporter(store, flush_interval_s=3600)
    trainer.metrics(record(1), total_steps=9)
    trainer.event("Checkpoint saved at step 1")
    failure = Reporter(ArtifactStore(store.root), flush_interval_s=3600)
    failure.event("boom", level="error")
    failure.close()
    files = JobFiles(store)
    assert [e["message"] for e in files.events()] == ["Step 1/9: training loss=1.0000", "Checkpoint saved at step 1",
                                                      "boom"]
    assert files.segments(EVENTS) == [(0, 0)], "one writer per job directory in a process"


def test_forget_after_then_recompute_reports_each_step_once(store) -> None:
    first = Reporter(store, flush_interval_s=3600)
    for step in range(1, 7):
        first.metrics(record(step), total_steps=8)
    first.flush()
    first.metrics(record(7), total_steps=8)  # buffered when the pod died
    first.close()
    resumed = Reporter(store, flush_interval_s=3600)
    resumed.forget_after(4)
    for step in range(5, 9):
        resumed.metrics(record(step, valid_loss=0.5), total_steps=8)
    csv_uri = resumed.write_results_csv()
    resumed.close()
    files = JobFiles(store)
    assert [m["step"] for m in files.metrics()] == list(range(1, 9))
    assert [e["data"]["step"] for e in files.events()] == list(range(1, 9))
    lines = (Path(store.root_path) / "results.csv").read_text().splitlines()
    assert csv_uri == store.uri("results.csv") and len(lines) == 9 and lines[5] == "5,0.2,0.5,0.5,"


def test_flush_cost_on_s3_does_not_grow_with_the_steps_already_logged(s3_endpoint) -> None:
    """Each flush after the first is one PUT per log of only its new lines, whether 10 or
    300 steps came before, plus every COMPACT_FANOUT flushes a merge: one PUT of the
    merged lines and one bulk DELETE per log (and, every FANOUT^2, reading the merged
    objects back). Readers then fetch a few objects, not one per flush."""
    store = ArtifactStore(f"{new_bucket('tuneforge-report-cost')}/team-a/fine-tuning/ftjob-report")
    reporter = Reporter(store, flush_interval_s=3600)
    per_flush = {}
    with recording(store.fs) as log:
        for step in range(1, 301):
            before = log.usage()
            reporter.metrics(record(step, padding=PADDING), total_steps=300)
            reporter.flush()
            per_flush[step] = log.usage() - before
    reporter.close()

    first = per_flush[1].operations
    assert first.count("PutObject") == 2 and set(first) == {"ListObjectsV2", "PutObject"}, "listing finds the first object"
    step_bytes = 2 * len(PADDING)  # the padding of the metrics line and of the metrics event
    plain = [per_flush[step] for step in range(2, 301) if step % COMPACT_FANOUT]
    assert {usage.operations for usage in plain} == {("PutObject", "PutObject")}
    assert all(step_bytes < usage.sent < step_bytes + 1024 for usage in plain), "only the new lines"
    assert all(usage.received < 1024 for usage in plain), "nothing is read back"
    assert per_flush[300].requests == per_flush[10].requests == 2

    tier_one = [per_flush[step] for step in range(COMPACT_FANOUT, 301, COMPACT_FANOUT) if step % COMPACT_FANOUT**2]
    assert {usage.operations.count("PutObject") for usage in tier_one} == {4}
    assert {usage.operations.count("DeleteObjects") for usage in tier_one} == {2}
    assert max(usage.sent for usage in tier_one) < (COMPACT_FANOUT + 1) * (step_bytes + 1024)

    files = JobFiles(store)
    assert files.segments(METRICS) == [(0, 255), *((n, n + 15) for n in range(256, 288, 16)), *((n, n) for n in range(288, 300))]
    assert [m["step"] for m in files.metrics()] == list(range(1, 301))
    assert [e["data"]["step"] for e in files.events()] == list(range(1, 301))
