"""A small refresh-ahead cache for what the gateway reads from the API server per request
(API keys, chat routes).

A plain TTL cache makes one request in every TTL wait for the API server (a route is four
reads), and every request arriving meanwhile misses too and repeats them: under steady
chat traffic those requests were the gateway's p99. Here a value past its TTL but younger
than twice the TTL is still served while a single background task reloads it; only an
absent or older value is loaded in the request, and concurrent requests for one key share
that load. So a value is never served more than two TTLs after it was read, except
while the API server cannot be asked at all: then the last value read is served for up to
STALE_IF_UNAVAILABLE_SECONDS, so chat keeps flowing through a control-plane outage as the
serving Pods keep running through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tuneforge.gateway.kube import ApiServerUnavailable

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger(__name__)

STALE_IF_UNAVAILABLE_SECONDS = 300.0
"""How long after it was read a value stands in for one the API server could not give. A
key revoked right before an outage keeps working that long at most."""


@dataclass
class _Entry(Generic[V]):
    value: V
    loaded_at: float


class RefreshingCache(Generic[K, V]):
    """Values fresh for `ttl` seconds and served stale (while being reloaded) for `ttl`
    more. A load that raises caches nothing: the callers waiting for it get the exception,
    and a failed background reload drops the stale value so that the next request loads
    (and sees the error) itself. Unless the API server was unavailable: that says nothing
    about the value, so it is kept and served instead for up to `stale_if_unavailable`
    seconds after it was read. A `ttl` of 0 caches nothing but still shares loads."""

    def __init__(self, ttl: float, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic,
                 stale_if_unavailable: float = STALE_IF_UNAVAILABLE_SECONDS) -> None:
        self.ttl = ttl
        self.stale_if_unavailable = stale_if_unavailable
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, _Entry[V]] = {}
        self._loading: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The value for `key`, from `load()` when it has none fresh enough."""
        entry = self._entries.get(key)
        if entry is not None:
            age = self._clock() - entry.loaded_at
            if age < self.ttl:
                return entry.value
            if age < 2 * self.ttl:
                if key not in self._loading:
                    self._start_load(key, load, background=True)
                return entry.value
        pending = self._loading.get(key) or self._start_load(key, load)
        try:
            # Shielded: a caller that goes away (client disconnect) leaves the load to the others.
            return await asyncio.shield(pending)
        except ApiServerUnavailable:
            if entry is None or self._clock() - entry.loaded_at >= self.stale_if_unavailable:
                raise
            return entry.value

    def forget(self, key: K) -> None:
        """Drops a value known to be wrong (say, a route to a Pod that refused connections)."""
        self._entries.pop(key, None)

    def _start_load(
        self, key: K, load: Callable[[], Awaitable[V]], *, background: bool = False
    ) -> asyncio.Task[V]:
        task = asyncio.ensure_future(self._load_and_store(key, load))
        task.add_done_callback(_log_failure if background else _retrieve_failure)
        self._loading[key] = task
        return task

    async def _load_and_store(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await load()
        except BaseException as exc:
            if not isinstance(exc, ApiServerUnavailable):  # which says nothing of the value: `get` falls back on it
                self._entries.pop(key, None)
            raise
        finally:
            self._loading.pop(key, None)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[key] = _Entry(value, self._clock())
        return value


def _retrieve_failure(task: asyncio.Task) -> None:
    """A request's load may have lost all its waiters (clients gone): its failure was
    theirs, not something for asyncio to report as never retrieved."""
    if not task.cancelled():
        task.exception()


def _log_failure(task: asyncio.Task) -> None:
    """A background reload's failure is logged (and so retrieved); the next request reloads."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("background reload of a cached value failed: %s", task.exception())
