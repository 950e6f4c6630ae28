"""Requests held while an autoscaled deployment has no ready replica (scale from zero).

A chat request for a deployment at zero replicas is not refused: it waits here, in a queue
bounded per deployment, while the deployment scales up. Engines at zero replicas report
no load, so the gateway speaks for the waiting requests: one task per deployment writes
their count on the ModelDeployment (`autoscaling.held_requests_annotation`) at once and
every HELD_REFRESH_SECONDS while any wait, and watches for a ready replica; the waiters
wake together when one is ready. A request that waits past the timeout, or finds the
queue full, gets 503 with Retry-After in OpenAI's error format, which the official client
retries.

With several gateway replicas each writes its own count and the last write wins, so the
autoscaler may start fewer replicas than all the held requests need; the engines' load
corrects that as soon as the first replica serves them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from tuneforge.api.v1alpha1.autoscaling import HELD_REFRESH_SECONDS, held_requests_annotation
from tuneforge.gateway import metrics
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.kube import Kube

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, ModelDeployment name)."""

ReadyProbe = Callable[[], Awaitable[bool]]
"""Whether the deployment has a ready replica now (read from the API server, not a cache)."""


@dataclass
class _Waiting:
    count: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task | None = None


class HeldRequests:
    def __init__(self, kube: Kube, *, limit: int, timeout: float, poll_seconds: float = 1.0) -> None:
        self.kube = kube
        self.limit = limit
        self.timeout = timeout
        self.poll_seconds = poll_seconds
        self._waiting: dict[Key, _Waiting] = {}

    def count(self, key: Key) -> int:
        waiting = self._waiting.get(key)
        return waiting.count if waiting else 0

    @asynccontextmanager
    async def hold(self, key: Key, ready: ReadyProbe, timeout: float | None = None) -> AsyncIterator[None]:
        """Waits until `ready()` holds for the deployment (the caller then routes afresh);
        raises 503 when the queue is full or the wait times out (after `timeout`, else the
        gateway's)."""
        namespace, name = key
        timeout = timeout or self.timeout
        waiting = self._waiting.setdefault(key, _Waiting())
        if waiting.count >= self.limit:
            raise self._unavailable(f"{waiting.count} requests already wait for the deployment '{name}' to scale "
                                    "up; try again shortly.", "model_queue_full", timeout)
        waiting.count += 1
        metrics.HELD_REQUESTS.labels(namespace, name).inc()
        if waiting.watcher is None:
            waiting.watcher = asyncio.ensure_future(self._watch(key, waiting, ready))
        started = time.monotonic()
        try:
            try:
                await asyncio.wait_for(waiting.ready.wait(), timeout)
            except TimeoutError:
                log.warning("a request for %s/%s waited %gs for a ready replica: 503", namespace, name, timeout)
                raise self._unavailable(f"The deployment '{name}' did not get a ready replica within "
                                        f"{timeout:g}s; try again shortly.", "model_scaling_up", timeout) from None
            yield
        finally:
            metrics.QUEUE_WAIT_SECONDS.observe(time.monotonic() - started)
            metrics.HELD_REQUESTS.labels(namespace, name).dec()
            waiting.count -= 1
            if waiting.count == 0 and self._waiting.get(key) is waiting:
                del self._waiting[key]
                if waiting.watcher is not None:
                    waiting.watcher.cancel()

    @staticmethod
    def _unavailable(message: str, code: str, timeout: float) -> OpenAIError:
        retry_after = max(1, round(min(timeout, 30)))
        return OpenAIError(503, message, param="model", code=code, type="server_error",
                           headers={"Retry-After": str(retry_after)})

    async def _watch(self, key: Key, waiting: _Waiting, ready: ReadyProbe) -> None:
        """Announces the held count and polls for a ready replica until one is there or
        nobody waits any more."""
        namespace, name = key
        announced_at = float("-inf")
        announced = 0
        while waiting.count:
            try:
                if await ready():
                    if self._waiting.get(key) is waiting:
                        # Requests arriving from now on find the replica without this watcher.
                        del self._waiting[key]
                    log.warning("%s/%s has a ready replica: releasing %d held requests", namespace, name,
                                waiting.count)
                    waiting.ready.set()
                    if announced:
                        # Served from now on: their load is the engine's to report, and a
                        # count left to go stale would hold the replicas up for nothing.
                        await self._announce(key, 0)
                    break
            except OpenAIError as exc:
                log.warning("could not read the replicas of %s/%s: %s", namespace, name, exc.message)
            now = time.monotonic()
            if waiting.count != announced or now - announced_at >= HELD_REFRESH_SECONDS:
                if await self._announce(key, waiting.count):
                    announced, announced_at = waiting.count, now
            await asyncio.sleep(self.poll_seconds)

    async def _announce(self, key: Key, count: int) -> bool:
        namespace, name = key
        annotation = held_requests_annotation(count, time.time())
        try:
            await self.kube.patch("modeldeployments", namespace, name, {"metadata": {"annotations": annotation}})
        except OpenAIError as exc:
            log.warning("could not announce %d held requests on %s/%s: %s", count, namespace, name, exc.message)
            return False
        return True
