"""A job directory's layout, readers and segmented log writer (tuneforge.jobfiles), on a
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


def test_a_flush_writes_the_open_segment_and_readers_concatenate(files) -> None:
    writer = files.log_writer(METRICS)
    assert not writer.flush(), "nothing pending, nothing written"
    for step in (1, 2):
        writer.append(metric(step))
    assert files.metrics() == [], "appending only buffers"
    assert writer.flush() and writer.pending == 0
    writer.append(metric(3))
    writer.flush()
    assert sorted(p.name for p in (job_dir(files) / "metrics").iterdir()) == ["00000000.jsonl"]
    assert [m["step"] for m in files.metrics()] == [1, 2, 3]


def test_segments_roll_over_at_the_cap_and_closed_ones_are_never_rewritten(files) -> None:
    writer = files.log_writer(EVENTS, cap=200)
    closed: dict[str, int] = {}
    for n in range(1, 31):
        writer.append(message_event(f"event {n}"))  # ~90 bytes a line
        writer.flush()
        segments = sorted((job_dir(files) / "events").iterdir())
        for segment in segments[:-1]:
            inode = closed.setdefault(segment.name, segment.stat().st_ino)
            assert segment.stat().st_ino == inode, f"{segment.name} was rewritten after it closed"
    sizes = [p.stat().st_size for p in sorted((job_dir(files) / "events").iterdir())]
    assert len(sizes) >= 10 and all(size < 200 + 100 for size in sizes), sizes
    assert files.segments(EVENTS) == list(range(len(sizes)))
    assert [e["message"] for e in files.events()] == [f"event {n}" for n in range(1, 31)]


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


def test_a_new_writer_starts_after_the_last_segment(files) -> None:
    """A restarted trainer (or the failure report of another process) never reopens a
    segment it did not write."""
    first = files.log_writer(EVENTS)
    first.append(message_event("first run"))
    first.flush()
    second = files.log_writer(EVENTS)
    second.append(message_event("second run"))
    second.flush()
    assert files.segments(EVENTS) == [0, 1]
    assert [e["message"] for e in files.events()] == ["first run", "second run"]


def test_legacy_single_files_are_read_before_the_segments(files) -> None:
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


def test_forget_after_drops_later_steps_across_legacy_file_and_segments(files) -> None:
    job_dir(files).mkdir(parents=True)
    (job_dir(files) / "metrics.jsonl").write_text("".join(metric(s) + "\n" for s in (1, 2)) + '{"ste')
    metrics, events = files.log_writer(METRICS, cap=60), files.log_writer(EVENTS, cap=300)
    for step in range(3, 9):
        metrics.append(metric(step))
        events.append(metric_event(step))
        events.append(message_event(f"Checkpoint saved at step {step}", step=step))
        metrics.flush()
        events.flush()
    assert len(files.segments(METRICS)) > 2
    events.append(metric_event(9))  # pending when the resumed run starts: flushed, then forgotten

    metrics.forget_after(5)
    events.forget_after(5)

    assert [m["step"] for m in files.metrics()] == [1, 2, 3, 4, 5]
    assert [e["data"]["step"] for e in files.events() if e["type"] == "metrics"] == [3, 4, 5]
    assert len([e for e in files.events() if e["type"] == "message"]) == 6, "message events are kept"
    assert (job_dir(files) / "metrics.jsonl").read_text() == metric(1) + "\n" + metric(2) + "\n"

    remaining = files.segments(METRICS)
    metrics.append(metric(6, 0.5))
    metrics.flush()
    assert [(m["step"], m["train_loss"]) for m in files.metrics()] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0),
                                                                        (5, 1.0), (6, 0.5)]
    assert files.segments(METRICS) == [*remaining, remaining[-1] + 1], "recomputed steps go to a new segment"


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
    new segments and checkpoint markers."""
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
