"""The listing cache's bookkeeping, against a scripted Kubernetes door (the edge of this
unit): which lists are served from a watch and which read directly, the object bound and
the least recently listed namespace going first, idle watches stopping, a write the watch
has not delivered, and versions that cannot be compared. The real watch against a real
API server is in tests/integration/gateway/test_listing_cache.py."""

from __future__ import annotations

import asyncio
import queue
import time

import pytest

from tuneforge.gateway import listing as listing_module
from tuneforge.gateway.listing import ListingCache, comparable_version

PLURAL = "finetuningjobs"


def _job(namespace: str, name: str, version: int | str) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": str(version),
                         "managedFields": [{"manager": "operator", "time": "2026-12-06T10:00:00Z", "fieldsV1": {}},
                                           {"manager": "kubectl", "time": "2026-12-06T09:00:00Z", "fieldsV1": {}}]},
            "spec": {}}


class Stream:
    def __init__(self, events: queue.Queue) -> None:
        self._events = events
        self.stopped = False

    def __iter__(self):
        while not self.stopped:
            try:
                event = self._events.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(event, Exception):
                raise event
            yield event

    def stop(self) -> None:
        self.stopped = True


class ScriptedKube:
    """Namespaces' objects and a queue of watch events per namespace; counts direct lists."""

    def __init__(self, objects: dict[str, list[dict]], version: int = 100) -> None:
        self.write_observers: list = []
        self.objects = objects
        self.version = version
        self.events: dict[str, queue.Queue] = {namespace: queue.Queue() for namespace in objects}
        self.direct_lists = 0
        self.streams: list[Stream] = []

    async def list(self, plural: str, namespace: str) -> list[dict]:
        self.direct_lists += 1
        return [dict(item, metadata=dict(item["metadata"])) for item in self.objects[namespace]]

    def list_snapshot(self, plural: str, namespace: str) -> tuple[list[dict], str]:
        return [dict(item, metadata=dict(item["metadata"])) for item in self.objects[namespace]], str(self.version)

    def watch(self, plural: str, namespace: str, resource_version: str, *, timeout_seconds: int) -> Stream:
        stream = Stream(self.events[namespace])
        self.streams.append(stream)
        return stream


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def _synced(cache: ListingCache, kube: ScriptedKube, namespace: str) -> None:
    """Lists until one is served from the watch."""
    deadline = time.monotonic() + 5
    while True:
        before = kube.direct_lists
        await cache.list(PLURAL, namespace)
        if kube.direct_lists == before:
            return
        assert time.monotonic() < deadline, "the watch never synced"
        await asyncio.sleep(0.01)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def watched(clock: Clock):
    """A scripted namespace `a` holding one job, j1, and a cache whose watch of it is synced."""
    kube = ScriptedKube({"a": [_job("a", "j1", 90)]})
    cache = ListingCache(kube, max_objects=10, idle_seconds=60, clock=clock)
    await _synced(cache, kube, "a")
    yield kube, cache
    cache.close()


async def test_lists_after_the_first_come_from_the_watch_with_only_the_newest_write_time(clock: Clock) -> None:
    kube = ScriptedKube({"a": [_job("a", "j1", 90)]})
    cache = ListingCache(kube, max_objects=10, idle_seconds=60, clock=clock)
    try:
        assert [r["metadata"]["name"] for r in await cache.list(PLURAL, "a")] == ["j1"]
        assert kube.direct_lists == 1
        await _synced(cache, kube, "a")
        direct = kube.direct_lists
        for _ in range(5):
            [listed] = await cache.list(PLURAL, "a")
            assert listed["metadata"]["managedFields"] == [{"time": "2026-12-06T10:00:00Z"}]
        assert kube.direct_lists == direct
    finally:
        cache.close()


async def test_the_least_recently_listed_namespace_goes_first_when_the_bound_is_passed(clock: Clock) -> None:
    kube = ScriptedKube({name: [_job(name, f"{name}-{i}", 90) for i in range(3)] for name in "abc"})
    cache = ListingCache(kube, max_objects=7, idle_seconds=60, clock=clock)
    try:
        for namespace in "ab":
            await _synced(cache, kube, namespace)
        clock.now += 1
        await cache.list(PLURAL, "a")  # b is now the least recently listed
        await _synced(cache, kube, "c")
        assert cache.object_count == 6
        direct = kube.direct_lists
        await cache.list(PLURAL, "a")
        await cache.list(PLURAL, "c")
        assert kube.direct_lists == direct
        await cache.list(PLURAL, "b")
        assert kube.direct_lists == direct + 1, "b's watch should have been dropped"
    finally:
        cache.close()


async def test_a_namespace_larger_than_the_bound_is_listed_directly_until_idle_seconds_pass(clock: Clock) -> None:
    kube = ScriptedKube({"big": [_job("big", f"j{i}", 90) for i in range(5)]})
    cache = ListingCache(kube, max_objects=4, idle_seconds=60, clock=clock)
    try:
        await cache.list(PLURAL, "big")
        await asyncio.sleep(0.2)  # the snapshot arrives, and is found too large
        assert cache.object_count == 0
        for _ in range(3):
            assert len(await cache.list(PLURAL, "big")) == 5
        assert kube.direct_lists == 4 and len(kube.streams) <= 1
        kube.objects["big"] = kube.objects["big"][:4]
        clock.now += 61
        await _synced(cache, kube, "big")
        assert cache.object_count == 4
    finally:
        cache.close()


async def test_idle_watches_stop(clock: Clock) -> None:
    kube = ScriptedKube({"a": [_job("a", "j1", 90)], "b": [_job("b", "j2", 90)]})
    cache = ListingCache(kube, max_objects=10, idle_seconds=60, clock=clock)
    try:
        await _synced(cache, kube, "a")
        clock.now += 61
        await cache.list(PLURAL, "b")
        assert cache.object_count <= 1  # a's object gone; b's, if its snapshot came already
        deadline = time.monotonic() + 5
        while not kube.streams[0].stopped:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        cache.close()


async def test_a_list_waits_for_the_watch_to_deliver_this_replicas_write(watched) -> None:
    kube, cache = watched
    created = _job("a", "j2", 105)
    cache.note_write("create", PLURAL, created)
    listed = asyncio.ensure_future(cache.list(PLURAL, "a"))
    await asyncio.sleep(0.1)
    assert not listed.done(), "the list did not wait for the write"
    kube.events["a"].put({"type": "ADDED", "object": created})
    assert {r["metadata"]["name"] for r in await listed} == {"j1", "j2"}
    assert kube.direct_lists == 1


async def test_a_write_the_watch_does_not_deliver_in_time_is_read_directly(watched, monkeypatch) -> None:
    monkeypatch.setattr(listing_module, "CATCH_UP_SECONDS", 0.2)
    kube, cache = watched
    kube.objects["a"].append(_job("a", "j2", 105))
    cache.note_write("create", PLURAL, kube.objects["a"][-1])
    direct = kube.direct_lists
    assert {r["metadata"]["name"] for r in await cache.list(PLURAL, "a")} == {"j1", "j2"}
    assert kube.direct_lists == direct + 1


async def test_a_deleted_object_is_hidden_until_the_watch_delivers_its_deletion(watched) -> None:
    kube, cache = watched
    cache.note_write("delete", PLURAL, {"metadata": {"name": "j1", "namespace": "a"}})
    assert await cache.list(PLURAL, "a") == []
    cache.note_write("create", PLURAL, _job("a", "j1", 105))  # the name reused before the watch caught up
    kube.events["a"].put({"type": "DELETED", "object": _job("a", "j1", 104)})
    kube.events["a"].put({"type": "ADDED", "object": _job("a", "j1", 105)})
    assert [r["metadata"]["resourceVersion"] for r in await cache.list(PLURAL, "a")] == ["105"]
    assert kube.direct_lists == 1


async def test_a_write_whose_version_cannot_be_compared_is_read_directly(watched) -> None:
    kube, cache = watched
    cache.note_write("patch", PLURAL, _job("a", "j1", "opaque-version"))
    direct = kube.direct_lists
    await cache.list(PLURAL, "a")
    assert kube.direct_lists == direct + 1


async def test_a_failed_watch_reads_directly_until_it_has_listed_again(watched) -> None:
    kube, cache = watched
    kube.events["a"].put(ConnectionResetError("the API server went away"))
    await asyncio.sleep(0.1)
    direct = kube.direct_lists
    await cache.list(PLURAL, "a")
    assert kube.direct_lists == direct + 1
    await _synced(cache, kube, "a")  # relisted after the backoff


async def test_caching_off_reads_every_list_directly(clock: Clock) -> None:
    kube = ScriptedKube({"a": [_job("a", "j1", 90)]})
    cache = ListingCache(kube, max_objects=0, idle_seconds=60, clock=clock)
    for _ in range(3):
        await cache.list(PLURAL, "a")
    assert kube.direct_lists == 3 and kube.streams == []


@pytest.mark.parametrize(("version", "expected"), [("12", 12), ("0", None), ("012", None), ("", None),
                                                   (None, None), ("1a", None), ("98765432109876543210", 98765432109876543210)])
def test_comparable_versions_follow_kep_5504(version, expected) -> None:
    assert comparable_version(version) == expected
