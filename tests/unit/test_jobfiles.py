"""A job directory's layout, readers and compacting log writer (tuneforge.jobfiles), on a
real local store and, where object-store behaviour matters, the loopback S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest

from tuneforge.contracts import TrainingProgress, TrainingResult
from tuneforge.jobfiles import EVENTS, METRICS, JobFiles
from tuneforge.storage import ArtifactStore

from tests.support.s3 import new_bucket


@pytest.fixture
def files(tmp_path) -> JobFiles:
    return JobFiles.of(ArtifactStore(f"file://{tmp_path}/store"), "team-a", "ftjob-1")


def job_dir(files: JobFiles) -> Path:
    return Path(files.path())


def metric(step: int, loss: float = 1.0) -> str:
    return json.dumps({"step": step, "train_loss": loss})


def metric_event(step: int) -> str:
    return json.dumps({"object": "fine_tuning.job.event", "type": "metrics", "message": f"Step {step}",
                       "data": {"step": step, "train_loss": 1.0}})


def message_event(message: str, **data) -> str:
    return json.dumps({"object": "fine_tuning.job.event", "type": "message", "message": message, "data": data})


def test_the_layout_sits_under_the_namespace_and_job(files, tmp_path) -> None:
    assert files.path() == f"{tmp_path}/store/team-a/fine-tuning/ftjob-1"
    assert files.checkpoint_uri(4) == f"file://{tmp_path}/store/team-a/fine-tuning/ftjob-1/checkpoints/step-4"
    assert JobFiles(ArtifactStore(f"file://{tmp_path}/out")).path("progress.json") == f"{tmp_path}/out/progress.json"


def names(files: JobFiles, log: str) -> list[str]:
    return sorted(p.name for p in (job_dir(files) / log).iterdir())


def test_each_flush_writes_a_new_object_of_only_its_lines_and_readers_concatenate(files) -> None:
    writer = files.log_writer(METRICS)
    assert not writer.flush(), "nothing pending, nothing written"
    for step in (1, 2):
        writer.append(metric(step))
    assert files.metrics() == [], "appending only buffers"
    assert writer.flush() and writer.pending == 0
    writer.append(metric(3))
    writer.flush()
    assert names(files, METRICS) == ["00000000.jsonl", "00000001.jsonl"]
    assert (job_dir(files) / METRICS / "00000001.jsonl").read_text() == metric(3) + "\n"
    assert [m["step"] for m in files.metrics()] == [1, 2, 3]


def test_compaction_merges_each_tier_into_one_object_and_keeps_the_order(files) -> None:
    """With a fanout of 4, 21 flushes leave one object of 16 (itself merged from four of 4),
    one of 4 and one single flush: three objects, read in order."""
    writer = files.log_writer(EVENTS, fanout=4)
    for n in range(1, 22):
        writer.append(message_event(f"event {n}"))
        writer.flush()
        assert len(names(files, EVENTS)) <= 3 * 4, "at most fanout objects per tier"
    assert names(files, EVENTS) == ["00000000-00000015.jsonl", "00000016-00000019.jsonl", "00000020.jsonl"]
    assert files.segments(EVENTS) == [(0, 15), (16, 19), (20, 20)]
    assert [e["message"] for e in files.events()] == [f"event {n}" for n in range(1, 22)]


def test_readers_ignore_the_sources_a_crashed_compaction_left(files) -> None:
    writer = files.log_writer(EVENTS, fanout=4)
    for n in range(1, 6):
        writer.append(message_event(f"event {n}"))
        writer.flush()
    log_dir = job_dir(files) / EVENTS
    for sequence, n in ((1, 2), (2, 3)):  # sources the merge into 00000000-00000003 did not delete
        (log_dir / f"{sequence:08d}.jsonl").write_text(message_event(f"event {n}") + "\n")
    assert files.segments(EVENTS) == [(0, 3), (4, 4)]
    assert [e["message"] for e in files.events()] == [f"event {n}" for n in range(1, 6)]

    restarted = files.log_writer(EVENTS, fanout=4)
    restarted.append(message_event("event 6"))
    restarted.flush()
    assert files.segments(EVENTS) == [(0, 3), (4, 4), (5, 5)], "a new writer continues after the last range"
    restarted.forget_after(0)
    assert names(files, EVENTS) == ["00000000-00000003.jsonl", "00000004.jsonl", "00000005.jsonl"], \
        "forgetting removes the leftovers, which would resurface if the object covering them went"


def test_a_failed_flush_keeps_its_lines_for_the_next(files) -> None:
    writer = files.log_writer(EVENTS)
    job_dir(files).mkdir(parents=True)
    (job_dir(files) / "events").write_text("a file where the segment directory belongs")
    writer.append(message_event("kept"))
    with pytest.raises(OSError):
        writer.flush()
    assert writer.pending > 0
    (job_dir(files) / "events").unlink()
    writer.append(message_event("later"))
    assert writer.flush()
    assert [e["message"] for e in files.events()] == ["kept", "later"]


def test_a_new_writer_starts_after_the_last_object(files) -> None:
    """A restarted trainer (or the failure report of another process) never rewrites an
    object it did not write."""
    first = files.log_writer(EVENTS)
    first.append(message_event("first run"))
    first.flush()
    second = files.log_writer(EVENTS)
    second.append(message_event("second run"))
    second.flush()
    assert files.segments(EVENTS) == [(0, 0), (1, 1)]
    assert [e["message"] for e in files.events()] == ["first run", "second run"]


def test_legacy_single_files_are_read_before_the_objects(files) -> None:
    job_dir(files).mkdir(parents=True)
    (job_dir(files) / "metrics.jsonl").write_text(metric(1) + "\n" + metric(2) + "\n" + '{"step": 3, "tra')
    (job_dir(files) / "events.jsonl").write_text(message_event("old trainer") + "\n")
    metrics, events = files.log_writer(METRICS), files.log_writer(EVENTS)
    metrics.append(metric(3))
    events.append(message_event("new trainer"))
    metrics.flush()
    events.flush()
    assert [m["step"] for m in files.metrics()] == [1, 2, 3], "the half-written legacy line is skipped"
    assert [e["message"] for e in files.events()] == ["old trainer", "new trainer"]


def test_metrics_by_step_keeps_the_last_record_of_a_step(files) -> None:
    writer = files.log_writer(METRICS)
    for line in (metric(1, 2.0), metric(2, 1.8), metric(2, 1.5), json.dumps({"note": "no step"}), metric(3, 1.2)):
        writer.append(line)
    writer.flush()
    by_step = files.metrics_by_step()
    assert list(by_step) == [1, 2, 3] and by_step[2]["train_loss"] == 1.5


def test_forget_after_drops_later_steps_across_legacy_file_and_objects(files) -> None:
    job_dir(files).mkdir(parents=True)
    (job_dir(files) / "metrics.jsonl").write_text("".join(metric(s) + "\n" for s in (1, 2)) + '{"ste')
    metrics, events = files.log_writer(METRICS, fanout=4), files.log_writer(EVENTS, fanout=4)
    for step in range(3, 9):
        metrics.append(metric(step))
        events.append(metric_event(step))
        events.append(message_event(f"Checkpoint saved at step {step}", step=step))
        metrics.flush()
        events.flush()
    assert files.segments(METRICS) == [(0, 3), (4, 4), (5, 5)]
    events.append(metric_event(9))  # pending when the resumed run starts: flushed, then forgotten

    metrics.forget_after(5)
    events.forget_after(5)

    assert [m["step"] for m in files.metrics()] == [1, 2, 3, 4, 5]
    assert [e["data"]["step"] for e in files.events() if e["type"] == "metrics"] == [3, 4, 5]
    assert len([e for e in files.events() if e["type"] == "message"]) == 6, "message events are kept"
    assert (job_dir(files) / "metrics.jsonl").read_text() == metric(1) + "\n" + metric(2) + "\n"

    assert files.segments(METRICS) == [(0, 3)], "the objects of steps 7 and 8 were emptied and deleted"
    metrics.append(metric(6, 0.5))
    metrics.flush()
    assert [(m["step"], m["train_loss"]) for m in files.metrics()] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0),
                                                                        (5, 1.0), (6, 0.5)]
    assert files.segments(METRICS) == [(0, 3), (6, 6)], "recomputed steps go to a new object"


def test_only_checkpoints_with_their_marker_count(files) -> None:
    checkpoints = job_dir(files) / "checkpoints"
    for name, complete in (("step-2", True), ("step-10", True), ("step-12", False), (".tmp-step-14-ab", True),
                           ("step-x", True)):
        (checkpoints / name).mkdir(parents=True)
        (checkpoints / name / "adapter_model.safetensors").write_bytes(b"w")
        if complete:
            (checkpoints / name / "COMPLETE").write_text("")
    assert files.complete_checkpoints() == [2, 10]
    assert files.checkpoint_created_at(10) > 0 and files.checkpoint_created_at(12) == 0


def test_progress_and_result_are_none_until_written(files) -> None:
    assert files.progress() is None and files.result() is None
    files.write_progress(TrainingProgress(status="running", step=3, total_steps=9))
    result = TrainingResult(fine_tuned_model="ft:m:team-a::ftjob-1", adapter_uri="file:///a", trained_tokens=10,
                            steps=9, epochs=1, hyperparameters={})
    files.write_result(result)
    assert files.progress().step == 3 and files.result() == result
    assert files.write_results_csv("step\n1\n") == files.uri("results.csv")


def test_readers_on_s3_see_what_another_process_wrote_after_their_first_look(s3_endpoint) -> None:
    """s3fs caches a process's listings forever; a gateway reading a job must still see
    new log objects and checkpoint markers."""
    bucket = new_bucket("tuneforge-jobfiles")
    reader = JobFiles.of(ArtifactStore(bucket), "team-a", "ftjob-1")
    assert reader.events() == [] and reader.complete_checkpoints() == []
    other = fsspec.filesystem("s3", skip_instance_cache=True)
    directory = reader.path()
    other.pipe(f"{directory}/events/00000000.jsonl", (message_event("hello") + "\n").encode())
    other.pipe(f"{directory}/checkpoints/step-3/adapter_model.safetensors", b"w")
    assert [e["message"] for e in reader.events()] == ["hello"]
    assert reader.complete_checkpoints() == []
    other.pipe(f"{directory}/checkpoints/step-3/COMPLETE", b"")
    other.pipe(f"{directory}/events/00000001.jsonl", (message_event("again") + "\n").encode())
    assert reader.complete_checkpoints() == [3] and reader.checkpoint_created_at(3) > 0
    assert [e["message"] for e in reader.events()] == ["hello", "again"]


def test_a_read_that_meets_a_compaction_lists_again_instead_of_losing_lines(files, monkeypatch) -> None:
    """The reader lists four objects; before it reads them the writer merges them into one
    and deletes the sources (forced here at the moment of the first read)."""
    writer = files.log_writer(METRICS, fanout=4)
    for step in range(1, 4):
        writer.append(metric(step))
        writer.flush()
    writer.append(metric(4))
    read = JobFiles._read_optional
    merged = []

    def read_during_compaction(self, path):
        if not merged:
            merged.append(writer.flush())  # the fourth object completes a tier: merge and delete
        return read(self, path)

    monkeypatch.setattr(JobFiles, "_read_optional", read_during_compaction)
    assert [m["step"] for m in files.metrics()] == [1, 2, 3, 4]
    assert names(files, METRICS) == ["00000000-00000003.jsonl"]
