"""A fine-tuning job's directory in the artifact store: the one place that knows its
layout, with the readers every component uses and the writer of its logs.

    <root>/<namespace>/fine-tuning/<job>/
        progress.json               TrainingProgress, rewritten by the trainer at a bounded rate
        result.json                 TrainingResult, written once on success
        results.csv                 OpenAI's result file, written at the end
        events/<seq>.jsonl          fine_tuning.job.event objects, one per line
        metrics/<seq>.jsonl         one record per optimizer step
        events.jsonl, metrics.jsonl the same logs as single files, left by older trainers
        checkpoints/step-<n>/       a checkpoint; it counts only once its COMPLETE marker exists

The logs are segmented because an object store cannot append: rewriting one growing
object per step costs O(steps) bytes and a read per step. A `LogWriter` rewrites only its
open segment (one atomic write) and starts the next once the open one reaches
`SEGMENT_CAP`, so a flush costs one request per log and bounded bytes however long the run
is. Sequence numbers are zero-padded, so listing order is log order; readers read a
legacy single file first, then the segments.

Readers drop fsspec's listing cache before they look: s3fs keeps a process's listings
forever, and a gateway or controller would otherwise never see a segment, checkpoint or
marker written after its first look.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tuneforge.contracts import TrainingProgress, TrainingResult
from tuneforge.storage import ArtifactStore, StoreError

FINE_TUNING = "fine-tuning"
PROGRESS = "progress.json"
RESULT = "result.json"
RESULTS_CSV = "results.csv"
EVENTS = "events"
METRICS = "metrics"
CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
SEGMENT_CAP = 256 * 1024
"""Bytes after which a log's open segment is closed: what one flush rewrites at most
(plus the lines of that flush), against how many objects a reader fetches (one per cap)."""
SEQUENCE_DIGITS = 8
SEGMENT = re.compile(r"^(\d+)\.jsonl$")
STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class JobFiles:
    """One job's directory: `JobFiles.of(store, namespace, job)` from the control plane,
    `JobFiles(store)` from a trainer whose store is rooted at the job's output URI."""

    store: ArtifactStore
    parts: tuple[str, ...] = ()

    @classmethod
    def of(cls, store: ArtifactStore, namespace: str, job: str) -> JobFiles:
        return cls(store, (namespace, FINE_TUNING, job))

    def path(self, *names: str) -> str:
        return self.store.path(*self.parts, *names)

    def uri(self, *names: str) -> str:
        return self.store.uri(*self.parts, *names)

    # -- progress and result -------------------------------------------------------------

    def progress(self) -> TrainingProgress | None:
        """The trainer's latest progress, or None before its first report."""
        data = self._read_json(PROGRESS)
        return None if data is None else TrainingProgress.model_validate(data)

    def result(self) -> TrainingResult | None:
        """The trainer's result, or None unless it finished successfully."""
        data = self._read_json(RESULT)
        return None if data is None else TrainingResult.model_validate(data)

    def write_progress(self, progress: TrainingProgress) -> None:
        self.store.write_json(self.path(PROGRESS), progress.model_dump(mode="json"))

    def write_result(self, result: TrainingResult) -> None:
        self.store.write_json(self.path(RESULT), result.model_dump(mode="json"))

    def write_results_csv(self, text: str) -> str:
        """Publishes results.csv; returns its URI (what result.json lists)."""
        self.store.write_bytes(self.path(RESULTS_CSV), text.encode())
        return self.uri(RESULTS_CSV)

    # -- logs ------------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Event records, oldest first."""
        return list(self._records(EVENTS))

    def metrics(self) -> list[dict[str, Any]]:
        """Metric records in the order written."""
        return list(self._records(METRICS))

    def metrics_by_step(self) -> dict[int, dict[str, Any]]:
        """One metric record per step, ascending; the last one written wins, so a step
        repeated after a crash counts once. Records without an integer step are skipped."""
        by_step: dict[int, dict[str, Any]] = {}
        for record in self._records(METRICS):
            try:
                by_step[int(record["step"])] = record
            except (KeyError, TypeError, ValueError):
                continue
        return {step: by_step[step] for step in sorted(by_step)}

    def segments(self, log: str) -> list[int]:
        """Sequence numbers of a log's segments, ascending."""
        return sorted(int(match.group(1)) for entry in self._list(log) if (match := SEGMENT.match(entry)))

    def segment_path(self, log: str, sequence: int) -> str:
        return self.path(log, f"{sequence:0{SEQUENCE_DIGITS}d}.jsonl")

    def log_writer(self, log: str, *, cap: int = SEGMENT_CAP) -> LogWriter:
        return LogWriter(self, log, cap=cap)

    def drop_steps_after(self, log: str, step: int) -> None:
        """Removes the log's records of steps after `step` (metric records and metric
        events), rewriting each file that holds any once; a file left empty is deleted."""
        for path in self._log_paths(log):
            content = self._read_optional(path)
            if content is None:
                continue
            lines = content.splitlines()
            kept = [line for line in lines if _kept(line, step)]
            if len(kept) == len(lines):
                continue
            if kept:
                self.store.write_bytes(path, b"".join(line + b"\n" for line in kept))
            else:
                self.store.delete(path)

    def _records(self, log: str) -> Iterator[dict[str, Any]]:
        """Parsed lines of every file of a log, in order. A line that does not parse (an
        older trainer's append caught half-way) or is not an object is skipped."""
        for path in self._log_paths(log):
            content = self._read_optional(path)
            for line in (content or b"").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record

    def _log_paths(self, log: str) -> list[str]:
        """The legacy single file, then the segments in sequence order."""
        return [self.path(f"{log}.jsonl"), *(self.segment_path(log, seq) for seq in self.segments(log))]

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint_name(self, step: int) -> str:
        """`checkpoints/step-<n>`, relative to the job directory."""
        return f"{CHECKPOINTS}/step-{step}"

    def checkpoint_uri(self, step: int) -> str:
        return self.uri(self.checkpoint_name(step))

    def complete_checkpoints(self) -> list[int]:
        """Steps of the checkpoints whose COMPLETE marker exists, oldest first: a directory
        without one is still being written (or was abandoned) and cannot be resumed from."""
        steps = []
        for entry in self._list(CHECKPOINTS):
            match = STEP_DIR.match(entry)
            if match and self._exists(self.checkpoint_name(int(match.group(1))), COMPLETE):
                steps.append(int(match.group(1)))
        return sorted(steps)

    def checkpoint_created_at(self, step: int) -> int:
        """Unix time the checkpoint was completed (its marker's modification time); 0 when
        the store cannot say or the checkpoint was pruned meanwhile."""
        path = self.path(self.checkpoint_name(step), COMPLETE)
        self.store.fs.invalidate_cache(path)
        try:
            return int(self.store.fs.modified(path).timestamp())
        except (FileNotFoundError, NotImplementedError):
            return 0

    # -- fresh looks -----------------------------------------------------------------------

    def _list(self, *names: str) -> list[str]:
        path = self.path(*names)
        self.store.fs.invalidate_cache(path)
        return self.store.listdir(path)

    def _exists(self, *names: str) -> bool:
        path = self.path(*names)
        self.store.fs.invalidate_cache(path)
        return self.store.exists(path)

    def _read_optional(self, path: str) -> bytes | None:
        self.store.fs.invalidate_cache(path)
        try:
            return self.store.read_bytes(path)
        except StoreError:
            return None

    def _read_json(self, name: str) -> Any:
        content = self._read_optional(self.path(name))
        return None if content is None else json.loads(content)


def _step_of(record: dict[str, Any]) -> int | None:
    """The step a metric record or metric event is about; None for message events.
    Metric records carry no `type`; events carry their step in `data`."""
    if record.get("type", "metrics") != "metrics":
        return None
    data = record.get("data", record)
    step = data.get("step") if isinstance(data, dict) else None
    return step if isinstance(step, int) else None


def _kept(line: bytes, step: int) -> bool:
    """Whether a log line survives forgetting the steps after `step`; a line that does not
    parse is dropped, since it is half of an older trainer's interrupted append."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    if not isinstance(record, dict):
        return False
    record_step = _step_of(record)
    return record_step is None or record_step <= step


class LogWriter:
    """Appends lines to one segmented log of a job.

    Lines collect in memory. `flush()` rewrites the open segment (one atomic write of what
    the store holds of it plus the new lines) and, once that reached the cap, moves on to
    a fresh segment. `append()` and `flush()` may run on different threads: the upload
    happens outside the buffer lock, so appending never waits for the store. When a flush
    fails, its lines stay pending and the next flush writes them.

    A writer finds its first sequence number by listing at its first flush and then never
    reopens a segment it did not write: one process writes a job's logs at a time, and a
    process that takes over (a restart, the failure report) starts after the last one.
    """

    def __init__(self, files: JobFiles, log: str, *, cap: int = SEGMENT_CAP) -> None:
        self.files = files
        self.log = log
        self.cap = cap
        self._segment = bytearray()  # the open segment: its stored bytes, then pending lines
        self._stored = 0  # how many leading bytes of _segment the store holds
        self._sequence: int | None = None  # None until the first flush lists the log
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.RLock()

    def append(self, line: str) -> None:
        data = line.rstrip("\n").encode() + b"\n"
        with self._buffer_lock:
            self._segment += data

    @property
    def pending(self) -> int:
        """Bytes appended but not yet in the store."""
        with self._buffer_lock:
            return len(self._segment) - self._stored

    def flush(self) -> bool:
        """Writes pending lines; returns whether there were any. Raises what the store
        raises, keeping the lines pending."""
        with self._flush_lock:
            with self._buffer_lock:
                if len(self._segment) == self._stored:
                    return False
                data = bytes(self._segment)
            if self._sequence is None:
                self._sequence = _next(self.files.segments(self.log))
            self.files.store.write_bytes(self.files.segment_path(self.log, self._sequence), data)
            with self._buffer_lock:
                if len(data) >= self.cap:
                    del self._segment[: len(data)]
                    self._stored = 0
                    self._sequence += 1
                else:
                    self._stored = len(data)
            return True

    def forget_after(self, step: int) -> None:
        """Drops the log's records of steps after `step`, which a resumed run is about to
        recompute: pending lines are flushed, every file holding such records is rewritten
        once, and later lines go to a fresh segment (the open one may have been rewritten)."""
        with self._flush_lock:
            self.flush()
            self.files.drop_steps_after(self.log, step)
            with self._buffer_lock:
                del self._segment[: self._stored]
                self._stored = 0
                self._sequence = None


def _next(sequences: list[int]) -> int:
    return sequences[-1] + 1 if sequences else 0
