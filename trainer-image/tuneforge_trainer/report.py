"""What the trainer tells the platform: files in the job's store directory (named by
`tuneforge.jobfiles`), and the container's termination message.

- `progress.json`: a `TrainingProgress`, rewritten atomically at most every
  `min_interval_s` (the gateway polls it; rewriting an S3 object per step would cost more
  than the step) and always at start, end and failure.
- the events log: OpenAI `fine_tuning.job.event` objects, `type` "message" or "metrics"
  (metrics carry `data` with step, train_loss, valid_loss, ...); the metrics log: one
  record per optimizer step (the source of the results CSV). `event()` and `metrics()`
  only buffer: a background thread flushes both logs every `flush_interval_s`, so the
  uploads never run on the training thread, and each flush writes only the new lines, as
  one new object per log; every 16 flushes the writer merges objects into one (in tiers,
  see `tuneforge.jobfiles`): a flush costs one request and its own lines per log, plus
  compactions that rewrite each line once per tier (log_16 of the flushes), and readers
  fetch a few objects. A failed background flush is logged and retried at the next interval with the
  same lines; `flush()` (the loop calls it at checkpoints) and `close()` (end of run,
  failure) write synchronously and raise what the store raises.
- `results.csv`: OpenAI's result-file columns, written at the end.
- `result.json`: a `TrainingResult`, written once on success.

On resume, metric lines and metric events of steps after the checkpoint are dropped, so
a step that is repeated after a crash is reported once.

The logs of one job directory have one writer per process, shared by every `Reporter` on
it: the failure path opens a second Reporter while the trainer's may still hold unflushed
lines, and sharing keeps the lines in order and lets the second `close()` flush them all.
Writers still open when the interpreter exits (a rank leaving through an exception) are
flushed then.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime

from tuneforge.config import settings
from tuneforge.contracts import ErrorInfo, TrainingProgress, TrainingResult
from tuneforge.jobfiles import EVENTS, METRICS, JobFiles
from tuneforge.storage import ArtifactStore

CSV_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
FLUSH_INTERVAL_S = 5.0

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, store: ArtifactStore, *, min_interval_s: float = 2.0,
                 flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.store = store
        self.files = JobFiles(store)
        self.min_interval_s = min_interval_s
        self.flush_interval_s = flush_interval_s
        self._last_progress = float("-inf")

    # -- progress --------------------------------------------------------------------

    def progress(self, progress: TrainingProgress, *, force: bool = False) -> bool:
        """Writes progress.json unless one was written less than min_interval_s ago."""
        now = time.monotonic()
        if not force and now - self._last_progress < self.min_interval_s:
            return False
        progress.updated_at = datetime.now(UTC)
        self.files.write_progress(progress)
        self._last_progress = now
        return True

    # -- events and metrics ----------------------------------------------------------

    def event(self, message: str, *, level: str = "info", type: str = "message", data: dict | None = None) -> None:
        record = {
            "object": "fine_tuning.job.event",
            "id": f"ftevent-{uuid.uuid4().hex[:24]}",
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "data": data or {},
            "type": type,
        }
        self._logs().events.append(json.dumps(record))

    def metrics(self, record: dict, total_steps: int) -> None:
        """One step's metrics: a metrics-log line and a metrics event."""
        self._logs().metrics.append(json.dumps(record))
        parts = [f"training loss={record['train_loss']:.4f}"]
        if record.get("valid_loss") is not None:
            parts.append(f"validation loss={record['valid_loss']:.4f}")
        if record.get("full_valid_loss") is not None:
            parts.append(f"full validation loss={record['full_valid_loss']:.4f}")
        self.event(f"Step {record['step']}/{total_steps}: " + ", ".join(parts), type="metrics",
                   data={**record, "total_steps": total_steps})

    def forget_after(self, step: int) -> None:
        """Drops metrics (and metric events) of steps after `step`: they are about to be
        recomputed by a resumed run."""
        logs = self._logs()
        for writer in logs.writers:
            writer.forget_after(step)

    def flush(self) -> None:
        """Writes buffered lines now, on the caller's thread."""
        logs = _open_logs.get(self.files.uri())
        if logs is not None:
            logs.flush()

    def close(self) -> None:
        """Flushes and stops the background thread; later lines start a new writer."""
        _close_logs(self.files.uri())

    def _logs(self) -> _Logs:
        return _logs_for(self.files, self.flush_interval_s)

    # -- end of run ------------------------------------------------------------------

    def write_results_csv(self) -> str:
        """results.csv with OpenAI's columns, one row per step; empty cells where a value
        was not measured at that step."""
        self.flush()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for m in self.files.metrics_by_step().values():
            row = [m["step"], m["train_loss"], m["train_mean_token_accuracy"], m.get("valid_loss"),
                   m.get("valid_mean_token_accuracy")]
            writer.writerow(["" if v is None else v for v in row])
        return self.files.write_results_csv(out.getvalue())

    def write_result(self, result: TrainingResult) -> None:
        self.files.write_result(result)


class _Logs:
    """The events and metrics writers of one job directory, and the daemon thread that
    flushes them every `interval_s`."""

    def __init__(self, files: JobFiles, interval_s: float) -> None:
        self.events = files.log_writer(EVENTS)
        self.metrics = files.log_writer(METRICS)
        self.writers = (self.metrics, self.events)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuneforge-report-flush", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Flushes every writer, even after one failed; then raises the first failure."""
        failures = []
        for writer in self.writers:
            try:
                writer.flush()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception:
                pending = sum(writer.pending for writer in self.writers)
                log.warning("report: flushing events and metrics failed; %d bytes stay buffered and are "
                            "retried in %.0f s", pending, self.interval_s, exc_info=True)


_open_logs: dict[str, _Logs] = {}
_open_logs_lock = threading.Lock()


def _logs_for(files: JobFiles, interval_s: float) -> _Logs:
    """The process's writers for a job directory, started on first use."""
    with _open_logs_lock:
        logs = _open_logs.get(files.uri())
        if logs is None:
            logs = _open_logs[files.uri()] = _Logs(files, interval_s)
        return logs


def _close_logs(key: str) -> None:
    with _open_logs_lock:
        logs = _open_logs.pop(key, None)
    if logs is not None:
        logs.close()


@atexit.register
def _close_all_logs() -> None:
    """Flushes what a process leaving without `close()` still buffers."""
    for key in list(_open_logs):
        try:
            _close_logs(key)
        except Exception:
            log.exception("report: the last flush of %s failed; its buffered events and metrics are lost", key)


def write_termination_message(info: ErrorInfo) -> None:
    """The one-line JSON {code, message, param} Kubernetes copies into the pod status."""
    line = json.dumps({"code": info.code, "message": info.message, "param": info.param})
    path = settings().termination_log  # TUNEFORGE_TERMINATION_LOG overrides it
    try:
        with open(path, "w") as handle:
            handle.write(line + "\n")
    except OSError:
        pass  # no termination log on this machine (a laptop); stderr still has the error
    os.write(2, (line + "\n").encode())
