"""The runner's crash-safe record of finished requests, on a local disk.

The work directory holds four files:

    output.jsonl    final output lines (2xx answers), append-only
    errors.jsonl    final error lines, append-only
    state.json      {validated, total, final, unfinished, crashes}: facts that must
                    survive a restart
    dispatched.log  custom_ids sent by the running process, emptied by a clean exit

A result line is appended, in one write call, only after its request finished, so the two
files *are* the journal: a custom_id present in either is done, one absent is not. On
start the journal repairs each file (a process killed mid-write can leave a torn last
line; everything from the first line that is not complete JSON is cut off) and rebuilds
the set of done custom_ids, the counts and the usage from what remains. Requests that were
in flight at the crash are simply sent again, and because a custom_id is written at most
once per run and skipped once present, every custom_id ends up in exactly one line.

Appends are fsynced in groups (`sync`), not per line: a killed process loses nothing that
reached the kernel, and after a machine crash the unsynced tail is repaired like a torn
line and re-run, which keeps exactly-once while costing one fsync per progress tick.

The dispatched log tells a death from a clean stop. An id is appended just before its
request is sent and the log is emptied whenever the process stops on purpose, so on
open the ids in it without a result are the requests in flight when the previous process
died; each is charged one crash in `state.crashes` (see crashes.py for what follows).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.contracts import RequestCounts, Usage

from tuneforge_inference.batch.records import Outcome, render, usage_of

OUTPUT = "output.jsonl"
ERRORS = "errors.jsonl"
STATE = "state.json"
DISPATCHED = "dispatched.log"


@dataclass
class JournalState:
    """Facts about the run that the result files cannot tell on their own."""

    validated: bool = False
    total: int = 0
    # Set once the batch's end is decided (completed, cancelled, expired, failed), before
    # any finalizing work, so that a restart finishes the same ending instead of resuming.
    final: str | None = None
    # The error ({code, message}) every request without a result gets when the batch
    # ends; decided with `final`, so a finalize interrupted halfway writes the same lines.
    unfinished: dict[str, str] | None = None
    # custom_id -> how many runner processes died while it was in flight (only ids > 0).
    crashes: dict[str, int] = field(default_factory=dict)


@dataclass
class _Scan:
    done: set[str] = field(default_factory=set)
    lines: int = 0
    usage: list[int] = field(default_factory=lambda: [0, 0, 0])


class Journal:
    """Append-only result files plus state, recovered on open."""

    def __init__(self, work_dir: Path) -> None:
        self.dir = work_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.output_path = self.dir / OUTPUT
        self.errors_path = self.dir / ERRORS
        ok = _recover(self.output_path)
        failed = _recover(self.errors_path)
        self.done: set[str] = ok.done | failed.done
        self.completed = ok.lines
        self.failed = failed.lines
        self.usage = ok.usage
        self.state = self._load_state()
        self._out_fd = os.open(self.output_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._err_fd = os.open(self.errors_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # Requests sent and not yet recorded by this process.
        self.in_flight: set[str] = set()
        self.died_in_flight = self._charge_crashes()
        _fsync_dir(self.dir)
        self._dirty = False

    # -- results -------------------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        """Appends the outcome's line to the output or error file; the caller guarantees a
        custom_id is recorded once (it skips ids in `done` and dispatches each once)."""
        line = render(outcome)
        if outcome.succeeded:
            _write_all(self._out_fd, line)
            self.completed += 1
            for i, tokens in enumerate(usage_of(outcome.body)):
                self.usage[i] += tokens
        else:
            _write_all(self._err_fd, line)
            self.failed += 1
        self.done.add(outcome.custom_id)
        self.in_flight.discard(outcome.custom_id)
        self._dirty = True

    # -- dispatch log --------------------------------------------------------------------

    def dispatch(self, custom_id: str) -> None:
        """Notes a request as sent, just before it is. Not fsynced: the log only has to
        outlive the process (a killed process's writes are in the kernel), and a machine
        crash loses at most a crash charge."""
        _write_all(self._dispatch_fd, dispatch_line(custom_id))
        self.in_flight.add(custom_id)

    def clear_dispatched(self) -> None:
        """The process stops on purpose: what is still in flight was abandoned, not the
        cause of a death, so a restart must not charge it a crash."""
        os.ftruncate(self._dispatch_fd, 0)
        self.in_flight.clear()

    def _charge_crashes(self) -> list[str]:
        """Charges a crash to each request the previous process sent without recording a
        result, and empties the log; returns those custom_ids. The log is emptied before
        the charges are saved, so a kill in between forgets a charge rather than doubling
        one: an innocent request is never failed for it."""
        died = [custom_id for custom_id in _read_dispatched(self.dir / DISPATCHED) if custom_id not in self.done]
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC
        self._dispatch_fd = os.open(self.dir / DISPATCHED, flags, 0o644)
        if died:
            crashes = dict(self.state.crashes)
            for custom_id in died:
                crashes[custom_id] = crashes.get(custom_id, 0) + 1
            self.save_state(crashes=crashes)
        return died

    def sync(self) -> None:
        """Makes every appended line durable (group commit)."""
        if self._dirty:
            self._dirty = False
            os.fsync(self._out_fd)
            os.fsync(self._err_fd)

    def counts(self) -> RequestCounts:
        return RequestCounts(total=self.state.total, completed=self.completed, failed=self.failed)

    def usage_report(self) -> Usage:
        return Usage(input_tokens=self.usage[0], output_tokens=self.usage[1], total_tokens=self.usage[2])

    def close(self) -> None:
        self.sync()
        os.close(self._out_fd)
        os.close(self._err_fd)
        os.close(self._dispatch_fd)

    # -- state ---------------------------------------------------------------------------

    def save_state(self, **changes: object) -> None:
        """Updates state.json atomically (temp file, fsync, rename, fsync directory)."""
        for key, value in changes.items():
            setattr(self.state, key, value)
        path = self.dir / STATE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(self.state.__dict__, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.dir)

    def _load_state(self) -> JournalState:
        try:
            return JournalState(**json.loads((self.dir / STATE).read_text()))
        except FileNotFoundError:
            return JournalState()


def _recover(path: Path) -> _Scan:
    """Scans a result file, truncating it at the first line that is not a complete JSON
    object with a custom_id (a torn write), and returns what the valid lines record."""
    scan = _Scan()
    if not path.exists():
        return scan
    good_end = 0
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                line = json.loads(raw)
                custom_id = line["custom_id"]
            except (ValueError, KeyError, TypeError):
                break
            if not isinstance(custom_id, str) or custom_id in scan.done:
                break
            scan.done.add(custom_id)
            scan.lines += 1
            response = line.get("response")
            if isinstance(response, dict) and 200 <= response.get("status_code", 0) < 300:
                for i, tokens in enumerate(usage_of(response.get("body"))):
                    scan.usage[i] += tokens
            good_end += len(raw)
    if good_end != path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
            handle.flush()
            os.fsync(handle.fileno())
    return scan


def dispatch_line(custom_id: str) -> bytes:
    """One dispatched-log line (JSON, so a custom_id holding a newline stays one line)."""
    return json.dumps(custom_id).encode() + b"\n"


def _read_dispatched(path: Path) -> list[str]:
    """The distinct custom_ids in a dispatched log, skipping a torn last line."""
    if not path.exists():
        return []
    ids: dict[str, None] = {}
    for raw in path.read_bytes().splitlines():
        try:
            custom_id = json.loads(raw)
        except ValueError:
            continue
        if isinstance(custom_id, str):
            ids[custom_id] = None
    return list(ids)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
