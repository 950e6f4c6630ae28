"""What the trainer tells the platform: files in the job's store directory, and the
container's termination message.

- `progress.json`: a `TrainingProgress`, rewritten atomically at most every
  `min_interval_s` (the gateway polls it; rewriting an S3 object per step would cost more
  than the step) and always at start, end and failure.
- `events.jsonl`: OpenAI `fine_tuning.job.event` objects, one per line, `type` "message"
  or "metrics" (metrics carry `data` with step, train_loss, valid_loss, ...).
- `metrics.jsonl`: one record per optimizer step (the source of the results CSV).
- `results.csv`: OpenAI's result-file columns, written at the end.
- `result.json`: a `TrainingResult`, written once on success.

On resume, metric lines and metric events of steps after the checkpoint are dropped, so
a step that is repeated after a crash is reported once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from datetime import UTC, datetime

from tuneforge.config import settings
from tuneforge.contracts import ErrorInfo, TrainingProgress, TrainingResult
from tuneforge.storage import ArtifactStore

CSV_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]


class Reporter:
    def __init__(self, store: ArtifactStore, *, min_interval_s: float = 2.0) -> None:
        self.store = store
        self.min_interval_s = min_interval_s
        self._last_progress = float("-inf")

    # -- progress --------------------------------------------------------------------

    def progress(self, progress: TrainingProgress, *, force: bool = False) -> bool:
        """Writes progress.json unless one was written less than min_interval_s ago."""
        now = time.monotonic()
        if not force and now - self._last_progress < self.min_interval_s:
            return False
        progress.updated_at = datetime.now(UTC)
        self.store.write_json(self.store.path("progress.json"), progress.model_dump(mode="json"))
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
        self.store.append_line(self.store.path("events.jsonl"), json.dumps(record))

    def metrics(self, record: dict, total_steps: int) -> None:
        """One step's metrics: a metrics.jsonl line and a metrics event."""
        self.store.append_line(self.store.path("metrics.jsonl"), json.dumps(record))
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
        for name in ("metrics.jsonl", "events.jsonl"):
            path = self.store.path(name)
            if not self.store.exists(path):
                continue
            kept = []
            for line in self.store.read_bytes(path).decode().splitlines():
                record = json.loads(line)
                record_step = record.get("data", record).get("step") if record.get("type", "metrics") == "metrics" else None
                if record_step is None or record_step <= step:
                    kept.append(line)
            self.store.write_bytes(path, "".join(f"{line}\n" for line in kept).encode())

    def read_metrics(self) -> list[dict]:
        path = self.store.path("metrics.jsonl")
        if not self.store.exists(path):
            return []
        return [json.loads(line) for line in self.store.read_bytes(path).decode().splitlines()]

    # -- end of run ------------------------------------------------------------------

    def write_results_csv(self) -> str:
        """results.csv with OpenAI's columns, one row per step; empty cells where a value
        was not measured at that step."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for m in self.read_metrics():
            row = [m["step"], m["train_loss"], m["train_mean_token_accuracy"], m.get("valid_loss"),
                   m.get("valid_mean_token_accuracy")]
            writer.writerow(["" if v is None else v for v in row])
        self.store.write_bytes(self.store.path("results.csv"), out.getvalue().encode())
        return self.store.uri("results.csv")

    def write_result(self, result: TrainingResult) -> None:
        self.store.write_json(self.store.path("result.json"), result.model_dump(mode="json"))


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
