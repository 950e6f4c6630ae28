"""Runs one BatchRun through its phases: validate, execute, finalize.

    validating -> in_progress -> finalizing -> completed
         |             |---------------------> expired    (deadline: rest -> batch_expired)
         |             '-> cancelling -------> cancelled  (cancel marker)
         '-> failed (the input file is invalid; no request is sent)

    finalize marker -> failed | expired | cancelled   (the controller's decision; nothing
                                                        is sent, the journal is published)

Execution streams the input: a producer parses one line at a time into a queue no longer
than the number of workers, and `concurrency` workers each send one request at a time, so
at most ~2x`concurrency` request bodies are in memory however large the file is. Requests
suspected of killing an earlier runner go first, one at a time (crashes.py). Results go to
the Journal as they finish; a ticker makes them durable, rewrites progress.json and polls
the cancel marker once per tick. SIGTERM does not end the batch: the runner leaves a
durable journal and raises Interrupted (interrupt.py). See docs/batches.md.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

import aiohttp

from tuneforge.config import settings
from tuneforge.contracts import BATCH_FINALIZE_MARKER, BatchFinalize, BatchRun, ErrorInfo
from tuneforge.datasets import BatchRequest, DatasetError, iter_batch_requests, validate_batch_file
from tuneforge.storage import ArtifactStore, filesystem

from tuneforge_inference.batch import crashes, snapshot
from tuneforge_inference.batch.cancel import CancelRequest
from tuneforge_inference.batch.interrupt import Interruption
from tuneforge_inference.batch.journal import Journal
from tuneforge_inference.batch.progress import ProgressReporter
from tuneforge_inference.batch.publish import publish
from tuneforge_inference.batch.records import Outcome
from tuneforge_inference.batch.retry import RetryPolicy
from tuneforge_inference.batch.sender import Sender

FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_REQUESTS = 50_000
EXPIRED = ErrorInfo(
    code="batch_expired", message="This request could not be executed before the completion window expired."
)


class RunnerError(Exception):
    """The runner cannot run this batch at all (as opposed to the batch failing)."""


class Interrupted(Exception):
    """The process was asked to stop (SIGTERM/SIGINT) and left the batch to a new Pod:
    the journal is durable and progress.json still shows the batch running."""


@dataclass(frozen=True)
class RunnerTuning:
    """Knobs outside the contract: fixed in production, shortened by tests."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Period of progress.json rewrites, journal fsyncs and cancel-marker checks.
    tick_s: float = 1.0


def work_dir_for(spec: BatchRun, batch_dir: ArtifactStore) -> Path:
    """Where the journal lives: inside the batch directory when the store is a local
    filesystem (a PVC survives the Pod), else in the local cache directory (an emptyDir
    survives container restarts of the Pod, which is what `restartPolicy: OnFailure` does)."""
    local = batch_dir.local_path(batch_dir.root_path)
    if local is not None:
        return Path(local) / "journal"
    return settings().cache_dir / "batch-journal" / spec.namespace / spec.batch_id


async def run_batch(spec: BatchRun, tuning: RunnerTuning | None = None) -> str:
    """Runs (or resumes, or re-finalizes, or only finalizes) the batch; returns its final
    status, or raises Interrupted."""
    batch_dir = ArtifactStore(spec.output_uri)
    progress_path = batch_dir.path("progress.json")
    existing = await asyncio.to_thread(batch_dir.read_json, progress_path)
    if existing and existing.get("status") in FINAL_STATUSES:
        return existing["status"]
    ending = await asyncio.to_thread(_finalize_marker, batch_dir)
    # A finalize-only run sends nothing, so it must not depend on the key (whose absence
    # may be why the batch could not finish).
    api_key = None if ending is not None else _api_key(spec)
    reporter = ProgressReporter(batch_dir, progress_path, existing)
    work_dir = work_dir_for(spec, batch_dir)
    remote_journal = batch_dir.local_path(batch_dir.root_path) is None
    if remote_journal:
        await asyncio.to_thread(snapshot.restore, work_dir, batch_dir)
    journal = Journal(work_dir)
    interruption = Interruption()
    interruption.install_signal_handlers()
    try:
        batch = _Batch(
            spec,
            tuning or RunnerTuning(),
            journal,
            reporter,
            CancelRequest(batch_dir),
            interruption,
            api_key,
            ending,
            batch_dir if remote_journal else None,
        )
        status = await batch.run()
        journal.clear_dispatched()
        return status
    finally:
        interruption.remove_signal_handlers()
        journal.close()


def _api_key(spec: BatchRun) -> str:
    api_key = os.environ.get(spec.api_key_env)
    if not api_key:
        raise RunnerError(f"environment variable {spec.api_key_env} (api_key_env) is not set")
    return api_key


def _finalize_marker(batch_dir: ArtifactStore) -> BatchFinalize | None:
    raw = batch_dir.read_json(batch_dir.path(BATCH_FINALIZE_MARKER))
    return None if raw is None else BatchFinalize.model_validate(raw)


UNFINISHED_CODES = {"failed": "batch_failed", "expired": "batch_expired"}
"""The error code of each request a batch ended without, by how it ended: one documented
code per ending that users' tooling can match, with the batch's own reason in the message."""


def _unfinished_error(ending: BatchFinalize) -> ErrorInfo | None:
    """The error line for requests left without a result by the controller's decision;
    None for a cancel, whose unfinished requests appear in neither file."""
    if ending.status == "cancelled":
        return None
    message = (f"The batch {ending.status} before this request was executed "
               f"({ending.error.code}: {ending.error.message}).")
    return ErrorInfo(code=UNFINISHED_CODES[ending.status], message=message)


class _Batch:
    def __init__(
        self,
        spec: BatchRun,
        tuning: RunnerTuning,
        journal: Journal,
        reporter: ProgressReporter,
        cancel: CancelRequest,
        interruption: Interruption,
        api_key: str | None,
        ending: BatchFinalize | None,
        snapshots: ArtifactStore | None,
    ) -> None:
        self.spec = spec
        self.tuning = tuning
        self.journal = journal
        self.reporter = reporter
        self.cancel = cancel
        self.interruption = interruption
        self.api_key = api_key
        self.ending = ending
        self.snapshots = snapshots
        self._in_flight_lock = asyncio.Lock()
        self._published_in_flight: list[str] | None = None

    async def run(self) -> str:
        if self.journal.died_in_flight:
            # The crash charges must outlive this Pod too, or a crash loop across Pods
            # would never reach the limit.
            await self._make_durable()
        if self.journal.state.final is None:
            if not self.journal.state.validated:
                error = await self._validate()
                if error is not None:
                    return await self._fail_validation(error)
            if self.ending is not None:
                self._decide(self.ending.status, _unfinished_error(self.ending))
            else:
                final = await self._execute()
                self._decide(final, EXPIRED if final == "expired" else None)
        return await self._finalize(self.journal.state.final)

    def _decide(self, final: str, unfinished: ErrorInfo | None) -> None:
        """Records how the batch ends before any finalizing work, so that a restart
        finishes the same ending with the same error lines."""
        self.journal.save_state(
            final=final, unfinished=None if unfinished is None else unfinished.model_dump(exclude_none=True)
        )

    # -- validating ------------------------------------------------------------------

    async def _validate(self) -> ErrorInfo | None:
        self.reporter.set_status("validating")
        await self.reporter.write()
        try:
            # In a thread so signals are still handled while a large file is scanned.
            summary = await asyncio.to_thread(self._validate_input)
        except DatasetError as exc:
            return exc.to_error_info()
        self.journal.save_state(validated=True, total=summary.n_requests)
        return None

    def _validate_input(self):
        fs, path = filesystem(self.spec.input_uri)
        with fs.open(path, "rb") as lines:
            return validate_batch_file(
                lines,
                endpoint=self.spec.endpoint,
                served_models=self.spec.served_models,
                max_requests=MAX_REQUESTS,
            )

    async def _fail_validation(self, error: ErrorInfo) -> str:
        self.reporter.progress.errors = [error]
        self.reporter.set_status("failed")
        await self.reporter.write()
        return "failed"

    # -- in_progress -----------------------------------------------------------------

    async def _execute(self) -> str:
        """Sends every request not yet in the journal; returns how the batch ends."""
        if self._remaining_s() <= 0:
            return "expired"
        if self.cancel.event.is_set():
            return "cancelled"
        if self.interruption.event.is_set():
            await self._leave()
        self._fail_culprits()
        self.reporter.set_status("in_progress")
        self._report_counts()
        await self.reporter.write()
        suspects = await asyncio.to_thread(self._suspects)
        concurrency = self.spec.concurrency
        async with _session(concurrency, self.spec.request_timeout_s, self.api_key) as client:
            sender = Sender(
                client,
                self.spec.target_base_url.rstrip("/") + self.spec.endpoint.removeprefix("/v1"),
                timeout_s=self.spec.request_timeout_s,
                max_retries=self.spec.max_retries,
                policy=self.tuning.retry,
            )
            stop_ticking = asyncio.Event()
            ticker = asyncio.create_task(self._tick(stop_ticking))
            try:
                stopped = await self._run_stage(suspects, 1, sender, alone=True)
                if stopped is None:
                    stopped = await self._run_stage(self._unfinished_requests(), concurrency, sender, alone=False)
            finally:
                stop_ticking.set()
                await asyncio.gather(ticker, return_exceptions=True)
        self.journal.clear_dispatched()
        if stopped == "interrupted":
            await self._leave()
        return stopped or "completed"

    def _remaining_s(self) -> float:
        return (self.spec.expires_at - datetime.now(timezone.utc)).total_seconds()

    def _fail_culprits(self) -> None:
        for custom_id, n in crashes.culprits(self.journal.state.crashes).items():
            if custom_id not in self.journal.done:
                self.journal.record(crashes.crashed(custom_id, n))

    def _suspects(self) -> list[BatchRequest]:
        """The charged requests, most charged first, so a culprit is identified in as few
        deaths as possible."""
        charged = self.journal.state.crashes
        if not charged:
            return []
        found = [r for r in self._unfinished_requests() if crashes.is_suspect(charged, r.custom_id)]
        return sorted(found, key=lambda request: (-charged[request.custom_id], request.line))

    def _unfinished_requests(self) -> Iterator[BatchRequest]:
        """The input's requests that have no result line (checked as each is reached)."""
        fs, path = filesystem(self.spec.input_uri)
        with fs.open(path, "rb") as lines:
            for request in iter_batch_requests(lines, endpoint=self.spec.endpoint):
                if request.custom_id not in self.journal.done:
                    yield request

    async def _run_stage(
        self, requests: Iterable[BatchRequest], n_workers: int, sender: Sender, *, alone: bool
    ) -> str | None:
        """Sends `requests` through `n_workers` workers; None once every one has a result,
        else why the stage stopped early: cancelled, interrupted or expired."""
        queue: asyncio.Queue[BatchRequest | None] = asyncio.Queue(maxsize=n_workers)
        producer = asyncio.create_task(self._produce(queue, requests, n_workers))
        workers = [asyncio.create_task(self._work(queue, sender, alone)) for _ in range(n_workers)]
        finished = asyncio.ensure_future(asyncio.gather(producer, *workers))
        cancelled = asyncio.create_task(self.cancel.event.wait())
        interrupted = asyncio.create_task(self.interruption.event.wait())
        try:
            await asyncio.wait(
                {finished, cancelled, interrupted}, timeout=self._remaining_s(), return_when=asyncio.FIRST_COMPLETED
            )
            if finished.done():
                finished.result()
                return None
            if cancelled.done():
                await self._announce_cancel()
                await self._drain(producer, queue, workers)
                return "cancelled"
            if interrupted.done():
                await self._drain(producer, queue, workers)
                return "interrupted"
            return "expired"
        finally:
            for task in (producer, *workers, cancelled, interrupted):
                task.cancel()
            await asyncio.gather(finished, cancelled, interrupted, return_exceptions=True)

    async def _produce(
        self, queue: asyncio.Queue[BatchRequest | None], requests: Iterable[BatchRequest], workers: int
    ) -> None:
        for request in requests:
            await queue.put(request)
        for _ in range(workers):
            await queue.put(None)

    async def _work(self, queue: asyncio.Queue[BatchRequest | None], sender: Sender, alone: bool) -> None:
        while (request := await queue.get()) is not None:
            self.journal.dispatch(request.custom_id)
            if alone:
                # A new Pod must know exactly which request was in flight if this one dies.
                await self._publish_in_flight()
            self.journal.record(await sender.send(request.custom_id, request.body))

    async def _announce_cancel(self) -> None:
        self.journal.save_state(final="cancelled")
        self.reporter.set_status("cancelling")
        await self.reporter.write()

    async def _drain(
        self,
        producer: asyncio.Task[None],
        queue: asyncio.Queue[BatchRequest | None],
        workers: list[asyncio.Task[None]],
    ) -> None:
        """Stops dispatching, lets in-flight requests finish within the grace period and
        abandons the rest (after a cancel they appear in neither file, as in OpenAI's
        cancelled batches; after an interruption the next Pod sends them again)."""
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
        while not queue.empty():
            queue.get_nowait()
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.wait(workers, timeout=self.spec.cancel_grace_s)

    async def _leave(self) -> NoReturn:
        """Hands the batch to the next Pod: the journal durable (in the store too, where it
        lives on this Pod's disk), progress.json current, the batch still in progress."""
        await self._make_durable()
        self._report_counts()
        await self.reporter.write()
        raise Interrupted

    async def _make_durable(self) -> None:
        await asyncio.to_thread(self.journal.sync)
        if self.snapshots is not None:
            # The in-flight set first: a Pod lost in between forgets a crash charge rather
            # than counting one twice.
            await self._publish_in_flight()
            await asyncio.to_thread(snapshot.take, self.journal, self.snapshots)

    async def _publish_in_flight(self) -> None:
        """Uploads the in-flight set when it changed (object stores only). The lock keeps
        uploads in order, so an older set never lands after a newer one."""
        if self.snapshots is None:
            return
        async with self._in_flight_lock:
            custom_ids = sorted(self.journal.in_flight)
            if custom_ids != self._published_in_flight:
                await asyncio.to_thread(snapshot.put_in_flight, custom_ids, self.snapshots)
                self._published_in_flight = custom_ids

    async def _tick(self, stop: asyncio.Event) -> None:
        """Runs until `stop` is set rather than being cancelled, so that no upload of its
        own is still under way, in a thread, when the runner takes its last snapshot."""
        last_snapshot = asyncio.get_running_loop().time()
        while not await _wait(stop, self.tuning.tick_s):
            await asyncio.to_thread(self.journal.sync)
            self._report_counts()
            await self.reporter.write()
            await self.cancel.poll_marker()
            await self._publish_in_flight()
            now = asyncio.get_running_loop().time()
            if self.snapshots is not None and now - last_snapshot >= self.spec.journal_snapshot_s:
                await asyncio.to_thread(snapshot.take, self.journal, self.snapshots)
                last_snapshot = now

    def _report_counts(self) -> None:
        self.reporter.progress.request_counts = self.journal.counts()
        self.reporter.progress.usage = self.journal.usage_report()

    # -- finalizing ------------------------------------------------------------------

    async def _finalize(self, final: str) -> str:
        if final == "completed":
            self.reporter.set_status("finalizing")
            self._report_counts()
            await self.reporter.write()
        unfinished = self.journal.state.unfinished
        if unfinished is not None:
            await asyncio.to_thread(self._close_unfinished, ErrorInfo(**unfinished))
        self.journal.sync()
        output_file_id, error_file_id = await asyncio.to_thread(publish, self.spec, self.journal)
        self._report_counts()
        self.reporter.progress.output_file_id = output_file_id
        self.reporter.progress.error_file_id = error_file_id
        if final == "failed" and self.ending is not None:
            self.reporter.progress.errors = [self.ending.error]
        self.reporter.set_status(final)
        await self.reporter.write()
        return final

    def _close_unfinished(self, error: ErrorInfo) -> None:
        """Gives every request without a result its error line, so that each custom_id
        appears exactly once across both files."""
        for request in self._unfinished_requests():
            self.journal.record(Outcome(request.custom_id, error_code=error.code, error_message=error.message))


def _session(concurrency: int, request_timeout_s: float, api_key: str | None) -> aiohttp.ClientSession:
    """One connection per worker. aiohttp rather than httpx: httpx's pool spends
    milliseconds per request once tens of connections share it (64 workers: ~80 requests/s
    against an upstream that answers at once, aiohttp ~3,000; see docs/batches.md)."""
    # Idle connections are dropped before the serving Pods' keep-alive timeout (uvicorn's
    # and vLLM's 5 s), so a request never goes out on a connection being closed under it.
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=2.0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=request_timeout_s, sock_read=request_timeout_s)
    # The target is the gateway's in-cluster Service, never reached through an egress
    # proxy, so HTTP(S)_PROXY is not consulted (aiohttp's trust_env would look it up in a
    # thread on every request).
    return aiohttp.ClientSession(connector=connector, timeout=timeout,
                                 headers={"Authorization": f"Bearer {api_key}"})


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    """Whether `event` was set within `timeout_s`."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True
