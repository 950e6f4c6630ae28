"""One reconcile loop per kind, in place of a kopf timer on every object.

A kind's reconcile must run again and again while an object is active, not only when the
object changes: it follows children and the store, which change without touching it.
kopf's timers do that with an asyncio task and a finalizer per object (kopf requires a
finalizer for every timer: nolar/kopf#833). At 1,000 jobs the tasks cost about 300 MB,
the finalizer costs a write per object, and deleting an object needs a running operator.

A Ticker keeps, from a silent kopf event handler, the latest body the watch delivered of
each active object (as compact JSON text; finished objects cost nothing) and reconciles
each one every `interval` in worker threads, a bounded number at a time. Like kopf's
timers it reconciles an object as soon as it is seen and never twice at once, skips
objects being deleted, and acts only while kopf's peering lets this replica act
(leadership.py). Unlike them it also reconciles at once when the spec changes, and it
waits for the watch to deliver its own status write before reconciling that object
again, so a reconcile never decides from the state it has just replaced.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.controllers import kube, metrics
from tuneforge.controllers.leadership import Leadership
from tuneforge.controllers.status import diff

Reconcile = Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], dict[str, Any]]
"""(object, observed status, indexes and the object's logger) -> desired status."""
Key = tuple[str | None, str]
"""(namespace, name); the namespace is None for cluster-scoped kinds."""

OWN_WRITE_WAIT = 10.0
"""Seconds a reconcile waits for the watch to deliver this ticker's own status write
before deciding from the body it has (the write's event may have been compacted away)."""


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """An object (or part of one) as plain JSON data: kopf's live views change under a
    running handler, and a reconcile or an index keeps one consistent copy."""
    return json.loads(json.dumps(dict(body), default=dict))


def _version(raw: Mapping[str, Any]) -> int:
    """The resourceVersion as a number, to tell an older event from a newer one (etcd's
    revisions; an unparsable one counts as newest)."""
    try:
        return int(raw["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return 2**63


@dataclass
class _Tracked:
    body: str
    version: int
    generation: int | None
    written: int = 0
    """The resourceVersion of this ticker's last status write, until the watch delivers it."""
    written_at: float = 0.0


class Ticker:
    def __init__(self, kind: str, plural: str, reconcile: Reconcile, *, interval: float,
                 leadership: Leadership, operator_settings: kopf.OperatorSettings, workers: int,
                 when: Callable[..., bool] | None = None, cluster_scoped: bool = False, name: str = "reconcile",
                 forget: Callable[[Key], None] | None = None) -> None:
        """`name` tells apart two tickers of one kind; `forget` is called when an object
        leaves the ticker (deleted, being deleted, inactive), for state kept beside it."""
        self.kind, self.plural, self.interval, self.name = kind, plural, interval, name
        self._reconcile, self._when, self._cluster_scoped = reconcile, when, cluster_scoped
        self._forget = forget
        self._leadership, self._operator_settings, self._workers = leadership, operator_settings, workers
        self._tracked: dict[Key, _Tracked] = {}
        self._schedule: list[tuple[float, int, Key]] = []
        self._due_at: dict[Key, float] = {}
        self._sequence = 0
        self._running: dict[Key, asyncio.Future[None]] = {}
        self._rerun: set[Key] = set()
        self._indexes: dict[str, Any] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    def register(self, registry: kopf.OperatorRegistry) -> None:
        kopf.on.event(GROUP, VERSION, self.plural, registry=registry, id=self.name)(self.observe)
        kopf.on.cleanup(registry=registry, id=f"stop-{self.plural}-{self.name}")(self.stop)

    @property
    def tracked(self) -> int:
        return len(self._tracked)

    async def observe(self, event: dict[str, Any], body: kopf.Body, uid: str, **kwargs: Any) -> None:
        """Keeps the object's latest body while it is active. The loop starts here, with
        the first object: a task made inside kopf's handling inherits the context that
        lets kopf.info and the object loggers post Events."""
        if self._task is None:
            self._indexes = {name: value for name, value in kwargs.items() if isinstance(value, kopf.Index)}
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix=f"{self.plural}-{self.name}")
            self._task = asyncio.create_task(self._loop(), name=f"{self.kind} {self.name} ticker")
        text = json.dumps(dict(body), default=dict, separators=(",", ":"))
        raw = json.loads(text)
        key: Key = (None if self._cluster_scoped else raw["metadata"].get("namespace"), raw["metadata"]["name"])
        if event.get("type") == "DELETED":
            metrics.PHASES.forget(self.kind, uid)
            self._drop(key)
            return
        if raw["metadata"].get("deletionTimestamp") or not self._active(raw):
            self._drop(key)
            return
        previous = self._tracked.get(key)
        version, generation = _version(raw), raw["metadata"].get("generation")
        if previous is not None and version < previous.version:
            return
        tracked = _Tracked(text, version, generation)
        if previous is not None and previous.written > version:
            tracked.written, tracked.written_at = previous.written, previous.written_at
        self._tracked[key] = tracked
        if previous is None or previous.generation != generation:
            self._plan(key, 0.0)

    async def stop(self, **_: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, *self._running.values(), return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def settled(self, key: Key) -> None:
        """Waits until no reconcile of `key` is running and none will start: for handlers
        (a delete handler) that must not overlap one."""
        self._drop(key)
        running = self._running.get(key)
        if running is not None:
            await asyncio.wait([running])

    def _active(self, raw: dict[str, Any]) -> bool:
        return self._when is None or self._when(spec=raw.get("spec") or {}, status=raw.get("status") or {})

    def _drop(self, key: Key) -> None:
        tracked = self._tracked.pop(key, None)
        self._due_at.pop(key, None)
        self._rerun.discard(key)
        if tracked is not None and self._forget is not None:
            self._forget(key)

    def _plan(self, key: Key, delay: float) -> None:
        """Reconciles `key` in `delay` seconds, or sooner if it is planned sooner; a key
        whose reconcile is running goes again as soon as that one ends."""
        if key in self._running:
            if delay == 0.0:
                self._rerun.add(key)
            return
        at = time.monotonic() + delay
        if key in self._due_at and self._due_at[key] <= at:
            return
        self._due_at[key] = at
        self._sequence += 1
        heapq.heappush(self._schedule, (at, self._sequence, key))
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            while self._schedule and len(self._running) < self._workers:
                at, _, key = self._schedule[0]
                if at > now:
                    break
                heapq.heappop(self._schedule)
                if self._due_at.get(key) != at:
                    continue
                del self._due_at[key]
                self._running[key] = asyncio.ensure_future(self._tick(key))
            wait = self._schedule[0][0] - now if self._schedule and len(self._running) < self._workers else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except TimeoutError:
                pass

    async def _tick(self, key: Key) -> None:
        delay = self.interval
        try:
            tracked = self._tracked.get(key)
            if tracked is None:
                return
            if tracked.written and time.monotonic() - tracked.written_at < OWN_WRITE_WAIT:
                delay = min(self.interval, 0.05)
                return
            context = contextvars.copy_context()
            loop = asyncio.get_running_loop()
            written = await loop.run_in_executor(self._executor, context.run, self._reconcile_one, key, tracked.body)
            current = self._tracked.get(key)
            if written is None:  # gone while the watch was down: its DELETED event never comes
                self._drop(key)
            elif current is not None and written > current.version:
                current.written, current.written_at = written, time.monotonic()
        finally:
            self._running.pop(key, None)
            if key in self._tracked:
                self._plan(key, 0.0 if key in self._rerun else delay)
            self._rerun.discard(key)
            self._wake.set()

    def changes(self, raw: dict[str, Any], *, indexes: Mapping[str, Any], logger: Any) -> dict[str, Any]:
        """The status fields one reconcile of `raw` changes (None for a field to remove):
        what the ticker writes, and all of it that does not touch the API."""
        status = raw.get("status") or {}
        with metrics.reconcile(self.kind):
            desired = self._reconcile(raw, status, {**indexes, "logger": logger})
        metrics.PHASES.observe(self.kind, raw["metadata"]["uid"], desired.get("phase"))
        return diff(status, desired)

    def _reconcile_one(self, key: Key, body: str) -> int | None:
        """One reconcile in a worker thread; returns the resourceVersion of the status it
        wrote (0 when it wrote none), None when the object no longer exists."""
        namespace, name = key
        if not self._leadership.acting(namespace):
            return 0
        raw = json.loads(body)
        logger = kopf.ObjectLogger(body=raw, settings=self._operator_settings)
        try:
            changed = self.changes(raw, indexes=self._indexes, logger=logger)
            if not changed:
                return 0
            try:
                return _version(kube.patch_custom_status(namespace, self.kind, name, changed))
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
        except ApiException as exc:
            logger.error("reconcile failed: the API server answered %s %s; retrying in %gs",
                         exc.status, exc.reason, self.interval)
        except Exception:  # noqa: BLE001 - the next tick retries, as kopf's timers did
            logger.exception("reconcile failed; retrying in %gs", self.interval)
        return 0


@dataclass(frozen=True)
class Ticking:
    """What every kind's Ticker in one operator shares: who may act, kopf's settings (its
    object loggers post Events by them) and the worker threads per kind."""

    leadership: Leadership
    operator_settings: kopf.OperatorSettings
    workers: int

    def install(self, registry: kopf.OperatorRegistry, kind: str, plural: str, reconcile: Reconcile, *,
                interval: float, when: Callable[..., bool] | None = None, cluster_scoped: bool = False,
                name: str = "reconcile", forget: Callable[[Key], None] | None = None) -> Ticker:
        ticker = Ticker(kind, plural, reconcile, interval=interval, leadership=self.leadership,
                        operator_settings=self.operator_settings, workers=self.workers, when=when,
                        cluster_scoped=cluster_scoped, name=name, forget=forget)
        ticker.register(registry)
        return ticker
