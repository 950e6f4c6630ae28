"""Lists of FineTuningJobs and BatchJobs served from watches, with read-your-writes.

A list request used to LIST the whole namespace from the API server: about a second per
page for a tenant with 10,000 jobs, and load on the API server that grows with every
tenant's history. Here the first list of a (kind, namespace) on a gateway replica starts
a watch of it, in a thread of its own: a paged LIST, then a WATCH from that snapshot's
resourceVersion, resumed after every server timeout and listed afresh after 410 Gone.
Requests then read the objects the watch keeps in memory, shared by every tenant's
requests on the replica.

Read-your-writes. Each custom-resource write through `Kube` reports the resourceVersion
the API server gave it; a list of that (kind, namespace) on this replica first waits until
the watch has delivered that version (the event of the write itself, or a bookmark past
it). Resource versions of one resource are comparable integers (KEP-5504, stable in
Kubernetes 1.35 and true of every etcd-backed API server before it); a namespace where
one is not is listed from the API server, as is a list whose watch has not caught up
within `CATCH_UP_SECONDS`. Writes made through another replica are seen as fast as the
watch delivers them (milliseconds), not waited for.

Bounds. The cache holds at most `max_objects` objects over all its watches: when a new
snapshot or event takes it past that, the least recently listed watches are stopped and
dropped, and a namespace that alone holds more is listed directly (and tried again after
`idle_seconds`). A watch not listed for `idle_seconds` is stopped. Objects are kept
with their managedFields cut down to the newest write's time: the rest only writers need.

A watch that failed (the API server unreachable, RBAC) keeps retrying with backoff; until
it has resumed, lists of its namespace are read directly, so they fail as a direct read
would rather than serve a state of unknown age.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tuneforge.gateway.kube import Kube, WatchExpired, WatchStream
from tuneforge.gateway.metrics import LIST_CACHE_OBJECTS, LIST_READS

log = logging.getLogger(__name__)

CATCH_UP_SECONDS = 2.0
"""How long a list waits for the watch to deliver the caller's own write before reading
the API server directly instead."""
WATCH_TIMEOUT_SECONDS = 300
"""Server-side length of one watch request; the next resumes where it ended."""
MAX_BACKOFF_SECONDS = 30.0

Key = tuple[str, str]
"""(plural, namespace)"""


def comparable_version(resource_version: str | None) -> int | None:
    """A resourceVersion as the integer it is compared by (KEP-5504: digits, no leading
    zero, not 0), or None when it is not one."""
    if not resource_version or not resource_version.isdigit() or resource_version.startswith("0"):
        return None
    return int(resource_version)


def _trimmed(resource: dict) -> dict:
    """`resource` with its managedFields (most of a small object's bytes) cut down to the
    time of the newest write, the one thing readers take from them (updatedAt)."""
    metadata = resource.get("metadata", {})
    times = [entry["time"] for entry in metadata.pop("managedFields", None) or [] if entry.get("time")]
    if times:
        metadata["managedFields"] = [{"time": max(times)}]
    return resource


@dataclass(eq=False)
class _Watched:
    """The objects of one (plural, namespace), kept current by one watch thread. Its
    fields change only on the event loop (the thread posts what it reads there)."""

    key: Key
    objects: dict[str, dict] = field(default_factory=dict)
    version: int | None = None
    synced: bool = False
    """Holds a complete snapshot and its watch is running (not failed since)."""
    gone: set[str] = field(default_factory=set)
    """Names this replica deleted whose deletion the watch has not delivered yet."""
    last_used: float = 0.0
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    stream: WatchStream | None = None

    def reached(self, version: int) -> bool:
        return self.version is not None and self.version >= version

    def advance(self, resource_version: str | None) -> None:
        version = comparable_version(resource_version)
        if version is None:
            return
        self.version = version if self.version is None else max(self.version, version)
        still_waiting = []
        for wanted, future in self.waiters:
            if self.reached(wanted):
                if not future.done():
                    future.set_result(None)
            else:
                still_waiting.append((wanted, future))
        self.waiters = still_waiting

    def stop(self) -> None:
        self.stopping.set()
        if self.stream is not None:
            self.stream.stop()
        for _, future in self.waiters:
            if not future.done():
                future.set_result(None)  # woken to find it gone; the list reads directly
        self.waiters = []


class ListingCache:
    """The objects of the (plural, namespace) pairs lists ask for, from watches; see the
    module docstring. `max_objects=0` turns caching off: every list reads directly."""

    def __init__(self, kube: Kube, *, max_objects: int, idle_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._max_objects = max_objects
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._watched: dict[Key, _Watched] = {}
        self._written: dict[Key, int] = {}
        self._direct_since: dict[Key, float] = {}
        """Namespaces listed from the API server (too large, incomparable versions), since when."""
        self._loop: asyncio.AbstractEventLoop | None = None
        kube.write_observers.append(self.note_write)

    async def list(self, plural: str, namespace: str) -> list[dict]:
        """Every object of `plural` in `namespace`, including the caller's writes through
        this replica. The dicts are shared: callers must not modify them."""
        key = (plural, namespace)
        watched = self._use(key)
        if watched is not None and watched.synced and await self._caught_up(watched, self._written.get(key)):
            LIST_READS.labels(source="cache").inc()
            if watched.gone:
                return [resource for name, resource in watched.objects.items() if name not in watched.gone]
            return list(watched.objects.values())
        LIST_READS.labels(source="api").inc()
        return [_trimmed(resource) for resource in await self._kube.list(plural, namespace)]

    def note_write(self, verb: str, plural: str, resource: Mapping) -> None:
        """Remembers the newest version this replica wrote in the object's namespace. A
        version that cannot be compared means no list can know it holds the write: that
        namespace is listed directly (for `idle_seconds`, then tried again).

        A delete that removed the object at once has no version to wait for (the API
        server answers with a Status): the name is hidden from this replica's lists until
        the watch delivers the deletion (or a later create reuses the name)."""
        metadata = resource.get("metadata") or {}
        key, name = (plural, metadata.get("namespace", "")), metadata.get("name", "")
        watched = self._watched.get(key)
        if verb == "delete" and not metadata.get("deletionTimestamp"):
            if watched is not None:
                watched.gone.add(name)
            return
        if watched is not None:
            watched.gone.discard(name)
        version = comparable_version(metadata.get("resourceVersion"))
        if version is None:
            self._list_directly(key, "its resource versions cannot be compared")
        else:
            self._written[key] = max(self._written.get(key, 0), version)

    def close(self) -> None:
        for watched in self._watched.values():
            watched.stop()
        self._watched.clear()
        LIST_CACHE_OBJECTS.set(0)

    @property
    def object_count(self) -> int:
        return sum(len(watched.objects) for watched in self._watched.values())

    # -- on the event loop -------------------------------------------------------------

    def _use(self, key: Key) -> _Watched | None:
        """The watch of `key`, started if need be; None when caching is off or the
        namespace holds more than the cache may."""
        now = self._clock()
        self._drop_idle(now)
        direct_since = self._direct_since.get(key)
        if self._max_objects <= 0 or (direct_since is not None and now - direct_since < self._idle_seconds):
            return None
        watched = self._watched.pop(key, None)
        if watched is None:
            watched = self._start(key)
        self._watched[key] = watched  # re-inserted last: the dict's order is least recently used first
        watched.last_used = now
        return watched

    async def _caught_up(self, watched: _Watched, written: int | None) -> bool:
        if written is None or watched.reached(written):
            return True
        future = asyncio.get_running_loop().create_future()
        watched.waiters.append((written, future))
        try:
            await asyncio.wait_for(future, CATCH_UP_SECONDS)
        except TimeoutError:
            log.warning("the watch of %s in %s is more than %.0f s behind this replica's write; listing directly",
                        *watched.key, CATCH_UP_SECONDS)
            return False
        return watched.synced and watched.reached(written)

    def _start(self, key: Key) -> _Watched:
        self._loop = self._loop or asyncio.get_running_loop()
        watched = _Watched(key)
        threading.Thread(target=self._watch_forever, args=(watched,), name=f"watch-{key[0]}-{key[1]}",
                         daemon=True).start()
        return watched

    def _drop_idle(self, now: float) -> None:
        for key, watched in list(self._watched.items()):
            if now - watched.last_used < self._idle_seconds:
                break  # least recently used first: the rest were used later
            self._drop(key)

    def _drop(self, key: Key) -> None:
        watched = self._watched.pop(key)
        watched.stop()
        self._set_gauge()

    def _keep_within_bound(self, watched: _Watched) -> None:
        """Drops the least recently listed watches while the cache holds too many objects;
        `watched` itself goes last, and is remembered as too large when it alone is."""
        for key in list(self._watched):
            if self.object_count <= self._max_objects:
                break
            if key != watched.key:
                self._drop(key)
        if self.object_count > self._max_objects and self._watched.get(watched.key) is watched:
            self._list_directly(watched.key, f"its {len(watched.objects)} objects are more than the cache holds "
                                             f"({self._max_objects})")
        self._set_gauge()

    def _list_directly(self, key: Key, reason: str) -> None:
        log.warning("listing %s in namespace %s from the API server for %.0f s: %s", *key, self._idle_seconds, reason)
        self._direct_since[key] = self._clock()
        if key in self._watched:
            self._drop(key)

    def _set_gauge(self) -> None:
        LIST_CACHE_OBJECTS.set(self.object_count)

    def _replace(self, watched: _Watched, items: list[dict], resource_version: str) -> None:
        if watched.stopping.is_set():
            return
        if comparable_version(resource_version) is None:
            self._list_directly(watched.key, "its resource versions cannot be compared")
            return
        watched.objects = {item["metadata"]["name"]: _trimmed(item) for item in items}
        watched.gone.intersection_update(watched.objects)
        watched.synced = True
        watched.advance(resource_version)
        self._keep_within_bound(watched)

    def _apply(self, watched: _Watched, kind: str, resource: dict) -> None:
        if watched.stopping.is_set():
            return
        metadata = resource.get("metadata") or {}
        if kind in ("ADDED", "MODIFIED"):
            watched.objects[metadata["name"]] = _trimmed(resource)
        elif kind == "DELETED":
            watched.objects.pop(metadata["name"], None)
            watched.gone.discard(metadata["name"])
        watched.advance(metadata.get("resourceVersion"))
        if kind == "ADDED":
            self._keep_within_bound(watched)

    def _unsynced(self, watched: _Watched) -> None:
        watched.synced = False

    # -- on the watch's thread ---------------------------------------------------------

    def _post(self, watched: _Watched, handler: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(handler, watched, *args)
        except RuntimeError:  # the loop has closed: the gateway is shutting down
            watched.stopping.set()

    def _watch_forever(self, watched: _Watched) -> None:
        plural, namespace = watched.key
        resource_version: str | None = None
        backoff = 0.5
        while not watched.stopping.is_set():
            try:
                if resource_version is None:
                    items, resource_version = self._kube.list_snapshot(plural, namespace)
                    self._post(watched, self._replace, items, resource_version)
                watched.stream = self._kube.watch(plural, namespace, resource_version,
                                                  timeout_seconds=WATCH_TIMEOUT_SECONDS)
                if watched.stopping.is_set():  # stopped before the stream could be
                    break
                for event in watched.stream:
                    resource = event["object"]
                    resource_version = resource["metadata"]["resourceVersion"]
                    self._post(watched, self._apply, event["type"], resource)
                backoff = 0.5
            except WatchExpired:
                resource_version = None
            except Exception as exc:  # noqa: BLE001 - a watch outlives any one failure: it retries
                if watched.stopping.is_set():
                    break
                log.warning("watching %s in %s failed (%s: %s); retrying in %.1f s", plural, namespace,
                            type(exc).__name__, exc, backoff)
                self._post(watched, self._unsynced)
                resource_version = None  # the events missed while down are only in a new list
                watched.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
