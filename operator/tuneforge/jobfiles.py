"""A fine-tuning job's directory in the artifact store: the one place that knows its
layout, with the readers every component uses and the writer of its logs.

    <root>/<namespace>/fine-tuning/<job>/
        progress.json               TrainingProgress, rewritten by the trainer at a bounded rate
        result.json                 TrainingResult, written once on success
        results.csv                 OpenAI's result file, written at the end
        events/<seq>.jsonl          fine_tuning.job.event objects, one per line; also
        events/<first>-<last>.jsonl   compacted objects covering a range of sequence numbers
        metrics/<seq>.jsonl         one record per optimizer step (compacted the same way)
        platform-events/<id>.json   events the operator adds (webhook deliveries), an object
                                    each: a second writer must not share the trainer's sequence
        events.jsonl, metrics.jsonl the same logs as single files, left by older trainers
        checkpoints/step-<n>/       a checkpoint; it counts only once its COMPLETE marker exists
        adapter/                    the published LoRA adapter, what serving engines load
        merged/                     the base model with the adapter folded in (spec.mergeAdapter)

The logs are split into objects because an object store cannot append: rewriting one
growing object per flush costs bytes that grow with the run. A `LogWriter` flush writes
only its new lines, as a new object `<seq>.jsonl` (one PUT). So that readers fetch a
bounded number of objects, the writer compacts in tiers: once `COMPACT_FANOUT`
consecutive objects of one tier exist since its last compaction at that tier, it writes
their concatenation as one object `<first>-<last>.jsonl` (the sequence range it covers)
and deletes the sources. A flush thus costs one request and its own lines per log, plus
the amortised compactions, which write each line once per tier reached (log_16 of the
flushes: three tiers by flush 4,096): what a step costs does not grow with the run's
length the way rewriting an object does.

Sequence numbers are zero-padded. Readers list the log, read a legacy single file first,
then every object ordered by its first sequence number, ignoring an object whose range
lies inside another's: the sources of a compaction that crashed before deleting them.
A writer that takes over a log (a restart, the failure report) continues after the
highest sequence number and leaves the objects it finds as they are.

Readers drop fsspec's listing cache before they look: s3fs keeps a process's listings
forever, and a gateway or controller would otherwise never see a log object, checkpoint or
marker written after its first look.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tuneforge.api.v1alpha1.finetuningjob import JOB_NAME_PREFIX
from tuneforge.contracts import TrainingProgress, TrainingResult
from tuneforge.storage import ArtifactStore, StoreError

logger = logging.getLogger(__name__)

FINE_TUNING = "fine-tuning"
PROGRESS = "progress.json"
RESULT = "result.json"
RESULTS_CSV = "results.csv"
EVENTS = "events"
PLATFORM_EVENTS = "platform-events"
METRICS = "metrics"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MERGED = "merged"
COMPLETE = "COMPLETE"
COMPACT_FANOUT = 16
"""Objects of one tier merged into one of the next: what a reader fetches at most per tier,
against how often a line is rewritten (once per tier, so log_16 of the flushes)."""
SEQUENCE_DIGITS = 8
READ_ATTEMPTS = 3
"""Listings of a log one read makes at most while a compaction replaces objects under it."""
SEGMENT = re.compile(r"^(\d+)(?:-(\d+))?\.jsonl$")
STEP_DIR = re.compile(r"^step-(\d+)$")


def adapter_uri(store_root: str, namespace: str, job: str) -> str:
    """Where job `job` of `namespace` publishes its adapter, from the store's root URI alone:
    what a serving Pod may load under that job's fine-tuned model id."""
    return posixpath.join(store_root.rstrip("/"), namespace, FINE_TUNING, job, ADAPTER)


def adapter_source_uri(store_root: str, namespace: str, source: str) -> str:
    """An adapter source as a ModelDeployment names it, as a URI: a FineTuningJob name is
    that job's adapter in the deployment's namespace, any other value already a URI."""
    return adapter_uri(store_root, namespace, source) if source.startswith(JOB_NAME_PREFIX) else source


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

    def platform_events(self) -> list[dict[str, Any]]:
        """The operator's event records, oldest first (their names sort by time)."""
        records = []
        for name in self._list(PLATFORM_EVENTS):
            content = self._read_optional(self.path(PLATFORM_EVENTS, name))
            if content is not None:
                records.append(json.loads(content))
        return records

    def write_platform_event(self, record: dict[str, Any]) -> None:
        """Adds one operator event; `record["id"]` names its object, so writing the same
        event again (a retried reconcile) replaces it instead of repeating it. The name
        starts with the time so a listing is in order."""
        name = f"{int(record['created_at']):012d}-{record['id']}.json"
        self.store.write_json(self.path(PLATFORM_EVENTS, name), record)

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

    def segments(self, log: str) -> list[tuple[int, int]]:
        """(first, last) sequence ranges of a log's objects, by first; an object inside
        another's range is left out (the sources of an interrupted compaction)."""
        return _outermost(self._ranges(log))

    def segment_path(self, log: str, first: int, last: int | None = None) -> str:
        """The object of one flush (`last` omitted or equal) or of a compacted range."""
        name = _sequence(first) if last is None or last == first else f"{_sequence(first)}-{_sequence(last)}"
        return self.path(log, f"{name}.jsonl")

    def log_writer(self, log: str, *, fanout: int = COMPACT_FANOUT) -> LogWriter:
        return LogWriter(self, log, fanout=fanout)

    def drop_steps_after(self, log: str, step: int) -> None:
        """Removes the log's records of steps after `step` (metric records and metric
        events), rewriting each object that holds any once; one left empty is deleted.
        Leftovers of an interrupted compaction go first: deleting the object that covers
        them would otherwise bring their forgotten records back."""
        ranges = self._ranges(log)
        live = _outermost(ranges)
        self.delete_objects([self.segment_path(log, *r) for r in ranges if r not in live])
        for path in [self.path(f"{log}.jsonl"), *(self.segment_path(log, *r) for r in live)]:
            self._drop_from(path, step)

    def delete_objects(self, paths: list[str]) -> None:
        """Deletes objects, one bulk request on S3 rather than one per object; a missing one
        is not an error."""
        if not paths:
            return
        try:
            self.store.retry.call(lambda: self.store.fs.rm(paths), f"delete {len(paths)} objects")
        except FileNotFoundError:
            pass

    def _drop_from(self, path: str, step: int) -> None:
        content = self._read_optional(path)
        if content is None:
            return
        lines = content.splitlines()
        kept = [line for line in lines if _kept(line, step)]
        if len(kept) == len(lines):
            return
        if kept:
            self.store.write_bytes(path, b"".join(line + b"\n" for line in kept))
        else:
            self.store.delete(path)

    def _records(self, log: str) -> Iterator[dict[str, Any]]:
        """Parsed lines of every file of a log, in order. A line that does not parse (an
        older trainer's append caught half-way) or is not an object is skipped."""
        for content in self._contents(log):
            for line in content.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record

    def _contents(self, log: str) -> list[bytes]:
        """The bytes of every file of a log, in order, as of one moment: a listed object
        that is gone when read was merged into a new one meanwhile (a compaction), so the
        log is listed again rather than read with a hole."""
        for _ in range(READ_ATTEMPTS - 1):
            paths = self._log_paths(log)
            contents = [self._read_optional(path) for path in paths]
            if all(content is not None for content in contents[1:]):
                return [content or b"" for content in contents]
        return [content for path in self._log_paths(log) if (content := self._read_optional(path)) is not None]

    def _log_paths(self, log: str) -> list[str]:
        """The legacy single file, then the objects in sequence order."""
        return [self.path(f"{log}.jsonl"), *(self.segment_path(log, *r) for r in self.segments(log))]

    def _ranges(self, log: str) -> list[tuple[int, int]]:
        """(first, last) of every object the log's directory lists, leftovers included."""
        ranges = []
        for entry in self._list(log):
            if match := SEGMENT.match(entry):
                first = int(match.group(1))
                ranges.append((first, int(match.group(2) or first)))
        return ranges

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


def _sequence(number: int) -> str:
    """Zero-padded, so that listing order is sequence order."""
    return f"{number:0{SEQUENCE_DIGITS}d}"


def _outermost(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges not inside another, by first: sorted by first and then widest first, a
    range is inside an earlier one exactly when it ends no later than the furthest end."""
    kept: list[tuple[int, int]] = []
    for first, last in sorted(ranges, key=lambda r: (r[0], -r[1])):
        if not kept or last > kept[-1][1]:
            kept.append((first, last))
    return kept


@dataclass(frozen=True)
class _Run:
    """An object this writer wrote since the last compaction of its tier; `data` is kept
    for tier 0 only (small and merged soon), higher tiers are read back when merged."""

    first: int
    last: int
    data: bytes | None = None


class LogWriter:
    """Appends lines to one log of a job.

    Lines collect in memory. `flush()` writes the pending lines as one new object and then
    compacts every tier that holds `fanout` objects of this writer (see the module
    docstring). `append()` and `flush()` may run on different threads: the upload happens
    outside the buffer lock, so appending never waits for the store. When a flush fails
    before its object is written, its lines stay pending and the next flush writes them; a
    failed compaction is retried by the next flush.

    A writer finds its first sequence number by listing at its first flush and compacts
    only objects it wrote: one process writes a job's logs at a time, and a process that
    takes over (a restart, the failure report) starts after the last one.
    """

    def __init__(self, files: JobFiles, log: str, *, fanout: int = COMPACT_FANOUT) -> None:
        self.files = files
        self.log = log
        self.fanout = fanout
        self._pending = bytearray()
        self._next: int | None = None  # None until the first flush lists the log
        self._tiers: list[list[_Run]] = []  # per tier, the runs since its last compaction
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.RLock()

    def append(self, line: str) -> None:
        data = line.rstrip("\n").encode() + b"\n"
        with self._buffer_lock:
            self._pending += data

    @property
    def pending(self) -> int:
        """Bytes appended but not yet in the store."""
        with self._buffer_lock:
            return len(self._pending)

    def flush(self) -> bool:
        """Writes pending lines; returns whether there were any. Raises what the store
        raises; lines stay pending unless their object was written."""
        with self._flush_lock:
            with self._buffer_lock:
                data = bytes(self._pending)
            if not data:
                return False
            if self._next is None:
                self._next = max((last + 1 for _, last in self.files.segments(self.log)), default=0)
            sequence = self._next
            self.files.store.write_bytes(self.files.segment_path(self.log, sequence), data)
            with self._buffer_lock:
                del self._pending[: len(data)]
            self._next += 1
            self._tier(0).append(_Run(sequence, sequence, data))
            try:
                self._compact()
            except Exception as exc:  # the lines are stored; a later flush merges again
                logger.warning("compacting %s failed, retried at the next flush: %s", self.log, exc)
            return True

    def forget_after(self, step: int) -> None:
        """Drops the log's records of steps after `step`, which a resumed run is about to
        recompute: pending lines are flushed, every object holding such records is
        rewritten once, and later lines go to new objects. Compaction starts afresh, as
        the objects this writer remembers may have changed."""
        with self._flush_lock:
            self.flush()
            self.files.drop_steps_after(self.log, step)
            self._tiers = []

    def _tier(self, tier: int) -> list[_Run]:
        while len(self._tiers) <= tier:
            self._tiers.append([])
        return self._tiers[tier]

    def _compact(self) -> None:
        """Merges full tiers, lowest first, so a merge can fill the tier above it."""
        tier = 0
        while tier < len(self._tiers):
            while len(self._tiers[tier]) >= self.fanout:
                self._merge(tier)
            tier += 1

    def _merge(self, tier: int) -> None:
        """Writes the tier's first `fanout` runs as one object, records it in the tier above,
        then deletes the sources: a crash in between leaves them inside the merged range,
        where readers ignore them."""
        runs = self._tiers[tier][: self.fanout]
        data = b"".join(self._content(run) for run in runs)
        merged = _Run(runs[0].first, runs[-1].last)
        self.files.store.write_bytes(self.files.segment_path(self.log, merged.first, merged.last), data)
        del self._tiers[tier][: self.fanout]
        self._tier(tier + 1).append(merged)
        self.files.delete_objects([self.files.segment_path(self.log, run.first, run.last) for run in runs])

    def _content(self, run: _Run) -> bytes:
        if run.data is not None:
            return run.data
        return self.files.store.read_bytes(self.files.segment_path(self.log, run.first, run.last))
