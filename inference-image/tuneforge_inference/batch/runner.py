"""Runs one BatchRun through its phases: validate, execute, finalize.

    validating -> in_progress -> finalizing -> completed
         |             |---------------------> expired    (deadline: rest -> batch_expired)
         |             '-> cancelling -------> cancelled  (SIGTERM or cancel marker)
         '-> failed (the input file is invalid; no request is sent)

Execution streams the input: a producer parses one line at a time into a queue no longer
than the number of workers, and `concurrency` workers each send one request at a time, so
at most ~2x`concurrency` request bodies are in memory however large the file is. Results
go to the Journal as they finish; a ticker makes them durable, rewrites progress.json and
polls the cancel marker once per tick. See docs/batches.md.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

from tuneforge.config import settings
from tuneforge.contracts import BatchRun, ErrorInfo
from tuneforge.datasets import BatchRequest, DatasetError, iter_batch_requests, validate_batch_file
from tuneforge.storage import ArtifactStore, filesystem

from tuneforge_inference.batch import snapshot
from tuneforge_inference.batch.cancel import CancelRequest
from tuneforge_inference.batch.journal import Journal
from tuneforge_inference.batch.progress import ProgressReporter
from tuneforge_inference.batch.publish import publish
from tuneforge_inference.batch.records import Outcome
from tuneforge_inference.batch.retry import RetryPolicy
from tuneforge_inference.batch.sender import Sender

FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_REQUESTS = 50_000
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


class RunnerError(Exception):
    """The runner cannot run this batch at all (as opposed to the batch failing)."""


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
    """Runs (or resumes, or re-finalizes) the batch; returns its final status."""
    api_key = os.environ.get(spec.api_key_env)
    if not api_key:
        raise RunnerError(f"environment variable {spec.api_key_env} (api_key_env) is not set")
    batch_dir = ArtifactStore(spec.output_uri)
    progress_path = batch_dir.path("progress.json")
    existing = await asyncio.to_thread(batch_dir.read_json, progress_path)
    if existing and existing.get("status") in FINAL_STATUSES:
        return existing["status"]
    reporter = ProgressReporter(batch_dir, progress_path, existing)
    work_dir = work_dir_for(spec, batch_dir)
    remote_journal = batch_dir.local_path(batch_dir.root_path) is None
    if remote_journal:
        await asyncio.to_thread(snapshot.restore, work_dir, batch_dir)
    journal = Journal(work_dir)
    cancel = CancelRequest(batch_dir)
    cancel.install_signal_handlers()
    try:
        snapshots = batch_dir if remote_journal else None
        return await _Batch(spec, tuning or RunnerTuning(), journal, reporter, cancel, api_key, snapshots).run()
    finally:
        cancel.remove_signal_handlers()
        journal.close()


class _Batch:
    def __init__(
        self,
        spec: BatchRun,
        tuning: RunnerTuning,
        journal: Journal,
        reporter: ProgressReporter,
        cancel: CancelRequest,
        api_key: str,
        snapshots: ArtifactStore | None,
    ) -> None:
        self.spec = spec
        self.tuning = tuning
        self.journal = journal
        self.reporter = reporter
        self.cancel = cancel
        self.api_key = api_key
        self.snapshots = snapshots

    async def run(self) -> str:
        if self.journal.state.final is None:
            if not self.journal.state.validated:
                error = await self._validate()
                if error is not None:
                    self.reporter.progress.errors = [error]
                    self.reporter.set_status("failed")
                    await self.reporter.write()
                    return "failed"
            self.journal.save_state(final=await self._execute())
        return await self._finalize(self.journal.state.final)

    # -- validating ------------------------------------------------------------------

    async def _validate(self) -> ErrorInfo | None:
        self.reporter.set_status("validating")
        await self.reporter.write()
        try:
            # In a thread so SIGTERM is still handled while a large file is scanned.
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

    # -- in_progress -----------------------------------------------------------------

    async def _execute(self) -> str:
        """Sends every request not yet in the journal; returns how the batch ends."""
        remaining_s = (self.spec.expires_at - datetime.now(timezone.utc)).total_seconds()
        if remaining_s <= 0:
            return "expired"
        if self.cancel.event.is_set():
            return "cancelled"
        self.reporter.set_status("in_progress")
        self._report_counts()
        await self.reporter.write()
        concurrency = self.spec.concurrency
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            limits=limits,
            timeout=httpx.Timeout(self.spec.request_timeout_s),
            headers={"Authorization": f"Bearer {self.api_key}"},
        ) as client:
            sender = Sender(
                client,
                self.spec.target_base_url.rstrip("/") + self.spec.endpoint.removeprefix("/v1"),
                timeout_s=self.spec.request_timeout_s,
                max_retries=self.spec.max_retries,
                policy=self.tuning.retry,
            )
            queue: asyncio.Queue[BatchRequest | None] = asyncio.Queue(maxsize=concurrency)
            producer = asyncio.create_task(self._produce(queue, concurrency))
            workers = [asyncio.create_task(self._work(queue, sender)) for _ in range(concurrency)]
            finished = asyncio.ensure_future(asyncio.gather(producer, *workers))
            cancelled = asyncio.create_task(self.cancel.event.wait())
            ticker = asyncio.create_task(self._tick())
            try:
                await asyncio.wait({finished, cancelled}, timeout=remaining_s, return_when=asyncio.FIRST_COMPLETED)
                if finished.done():
                    finished.result()
                    return "completed"
                producer.cancel()
                if cancelled.done():
                    await self._cancel_in_flight(queue, workers, concurrency)
                    return "cancelled"
                return "expired"
            finally:
                for task in (producer, *workers, cancelled, ticker):
                    task.cancel()
                await asyncio.gather(finished, cancelled, ticker, return_exceptions=True)

    async def _produce(self, queue: asyncio.Queue[BatchRequest | None], workers: int) -> None:
        fs, path = filesystem(self.spec.input_uri)
        with fs.open(path, "rb") as lines:
            for request in iter_batch_requests(lines, endpoint=self.spec.endpoint):
                if request.custom_id not in self.journal.done:
                    await queue.put(request)
        for _ in range(workers):
            await queue.put(None)

    async def _work(self, queue: asyncio.Queue[BatchRequest | None], sender: Sender) -> None:
        while (request := await queue.get()) is not None:
            self.journal.record(await sender.send(request.custom_id, request.body))

    async def _cancel_in_flight(
        self, queue: asyncio.Queue[BatchRequest | None], workers: list[asyncio.Task[None]], n: int
    ) -> None:
        """Stops dispatching, lets in-flight requests finish within the grace period and
        abandons the rest (they appear in neither file, as in OpenAI's cancelled batches)."""
        self.journal.save_state(final="cancelled")
        self.reporter.set_status("cancelling")
        await self.reporter.write()
        while not queue.empty():
            queue.get_nowait()
        for _ in range(n):
            queue.put_nowait(None)
        await asyncio.wait(workers, timeout=self.spec.cancel_grace_s)

    async def _tick(self) -> None:
        last_snapshot = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.tuning.tick_s)
            await asyncio.to_thread(self.journal.sync)
            self._report_counts()
            await self.reporter.write()
            await self.cancel.poll_marker()
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
        if final == "expired":
            await asyncio.to_thread(self._expire_unfinished)
        self.journal.sync()
        output_file_id, error_file_id = await asyncio.to_thread(publish, self.spec, self.journal)
        self._report_counts()
        self.reporter.progress.output_file_id = output_file_id
        self.reporter.progress.error_file_id = error_file_id
        self.reporter.set_status(final)
        await self.reporter.write()
        return final

    def _expire_unfinished(self) -> None:
        fs, path = filesystem(self.spec.input_uri)
        with fs.open(path, "rb") as lines:
            for request in iter_batch_requests(lines, endpoint=self.spec.endpoint):
                if request.custom_id not in self.journal.done:
                    self.journal.record(
                        Outcome(request.custom_id, error_code="batch_expired", error_message=EXPIRED_MESSAGE)
                    )
