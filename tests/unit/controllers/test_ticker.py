"""The per-kind reconcile loop: when it reconciles an object, and when it must not.

The watch is played by calling `observe` as kopf would; the API server's status write is
the one edge replaced (it records the patch and answers with a newer resourceVersion).
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from tuneforge.controllers import kube
from tuneforge.controllers.leadership import Leadership, acts
from tuneforge.controllers.ticker import Ticker

INTERVAL = 0.2


class Recorder:
    """A reconcile that counts its calls per object, can be held mid-run, and sets the
    phase it is told to."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.running = 0
        self.overlapped = False
        self.release = threading.Event()
        self.release.set()
        self.phase = "Running"

    def __call__(self, raw: dict, status: dict, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.running += 1
        self.overlapped |= self.running > 1
        self.calls.append(raw["metadata"]["name"])
        self.release.wait(5)
        self.running -= 1
        return {**status, "phase": self.phase}


class Patches:
    def __init__(self) -> None:
        self.written: list[tuple[str, dict]] = []
        self.version = 1000

    def __call__(self, namespace: str | None, kind: str, name: str, status: dict) -> dict:
        self.written.append((name, status))
        self.version += 1
        return {"metadata": {"resourceVersion": str(self.version)}}


@pytest.fixture
def patches(monkeypatch: pytest.MonkeyPatch) -> Patches:
    recorded = Patches()
    monkeypatch.setattr(kube, "patch_custom_status", recorded)
    return recorded


def body(name: str, *, version: int = 1, generation: int = 1, phase: str | None = None, **meta: Any) -> dict:
    return {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
            "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}", "resourceVersion": str(version),
                         "generation": generation, **meta},
            "spec": {}, "status": {"phase": phase} if phase else {}}


def ticker(reconcile: Recorder, *, acting: bool = True, when: Any = None) -> Ticker:
    leadership = Leadership("me") if acting else Leadership("me", peering="tuneforge")
    if not acting:
        leadership._read = lambda namespace: False  # a higher-priority peer is alive
    return Ticker("FineTuningJob", "finetuningjobs", reconcile, interval=INTERVAL, leadership=leadership,
                  operator_settings=kopf.OperatorSettings(), workers=4, when=when)


async def see(tick: Ticker, raw: dict, kind: str = "MODIFIED") -> None:
    await tick.observe({"type": kind, "object": raw}, raw, raw["metadata"]["uid"])


async def settle(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def until(condition: Any, message: str, timeout: float = 5.0) -> None:
    """Waits for what must happen (a loaded machine may take a while); what must not
    happen is checked after a fixed `settle`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.01)


async def test_an_object_is_reconciled_when_seen_and_then_every_interval(patches: Patches) -> None:
    reconcile = Recorder()
    tick = ticker(reconcile)
    try:
        await see(tick, body("a"), "ADDED")
        await until(lambda: reconcile.calls == ["a"], "not reconciled as soon as it was seen", timeout=INTERVAL * 2)
        assert patches.written == [("a", {"phase": "Running"})]
        await see(tick, body("a", version=patches.version, phase="Running"))
        started = time.monotonic()
        await until(lambda: len(reconcile.calls) >= 4, "not reconciled every interval")
        assert time.monotonic() - started >= INTERVAL * 2, "reconciled more often than every interval"
        assert len(patches.written) == 1, "a reconcile that changed nothing wrote status"
    finally:
        await tick.stop()


async def test_a_spec_change_is_reconciled_at_once_and_never_alongside_a_running_reconcile(patches: Patches) -> None:
    reconcile = Recorder()
    tick = ticker(reconcile)
    try:
        reconcile.release.clear()
        await see(tick, body("a", phase="Running"), "ADDED")
        await until(lambda: reconcile.calls == ["a"], "not reconciled when seen")
        await see(tick, body("a", version=2, generation=2, phase="Running"))
        await settle(0.05)
        assert reconcile.calls == ["a"], "a second reconcile started while the first ran"
        released = time.monotonic()
        reconcile.release.set()
        await until(lambda: reconcile.calls == ["a", "a"], "the spec change was not reconciled")
        assert time.monotonic() - released < INTERVAL, "the spec change waited for the next interval"
        assert not reconcile.overlapped
    finally:
        reconcile.release.set()
        await tick.stop()


async def test_its_own_status_write_is_awaited_before_the_next_reconcile(patches: Patches) -> None:
    reconcile = Recorder()
    tick = ticker(reconcile)
    try:
        await see(tick, body("a"), "ADDED")
        await until(lambda: patches.written, "no status written")
        await settle(INTERVAL * 2.5)
        assert reconcile.calls == ["a"], "reconciled again from the status its write replaced"
        await see(tick, body("a", version=patches.version, phase="Running"))
        await until(lambda: reconcile.calls == ["a", "a"], "not reconciled once its write was seen")
    finally:
        await tick.stop()


async def test_inactive_deleted_and_deleting_objects_are_not_reconciled(patches: Patches) -> None:
    reconcile = Recorder()
    tick = ticker(reconcile, when=lambda status, **_: status.get("phase") != "Succeeded")
    try:
        await see(tick, body("done", phase="Succeeded"), "ADDED")
        await see(tick, body("deleting", deletionTimestamp="2026-01-01T00:00:00Z"), "ADDED")
        await see(tick, body("deleted"), "ADDED")
        await see(tick, body("deleted", version=2), "DELETED")
        await settle(INTERVAL * 2)
        assert "done" not in reconcile.calls and "deleting" not in reconcile.calls
        assert reconcile.calls.count("deleted") <= 1
        assert tick.tracked == 0
    finally:
        await tick.stop()


async def test_state_kept_beside_the_ticker_is_forgotten_once_when_an_object_leaves(patches: Patches) -> None:
    forgotten: list = []
    tick = Ticker("FineTuningJob", "finetuningjobs", Recorder(), interval=INTERVAL, leadership=Leadership("me"),
                  operator_settings=kopf.OperatorSettings(), workers=4, forget=forgotten.append,
                  when=lambda status, **_: status.get("phase") != "Succeeded")
    try:
        await see(tick, body("a"), "ADDED")
        await see(tick, body("b"), "ADDED")
        await see(tick, body("a", version=2, phase="Succeeded"))
        await see(tick, body("a", version=3, phase="Succeeded"))
        await see(tick, body("b", version=2), "DELETED")
        assert forgotten == [("team", "a"), ("team", "b")]
    finally:
        await tick.stop()


async def test_a_standby_replica_reconciles_nothing(patches: Patches) -> None:
    reconcile = Recorder()
    tick = ticker(reconcile, acting=False)
    try:
        await see(tick, body("a"), "ADDED")
        await settle(INTERVAL * 2)
        assert reconcile.calls == [] and patches.written == []
    finally:
        await tick.stop()


async def test_a_delete_handler_waits_for_the_running_reconcile(patches: Patches) -> None:
    reconcile = Recorder()
    tick = ticker(reconcile)
    try:
        reconcile.release.clear()
        await see(tick, body("a"), "ADDED")
        await until(lambda: reconcile.running, "not reconciled when seen")
        settled = asyncio.ensure_future(tick.settled(("team", "a")))
        await settle(0.1)
        assert not settled.done(), "settled while a reconcile was running"
        reconcile.release.set()
        await asyncio.wait_for(settled, 2)
        await settle(INTERVAL * 2)
        assert reconcile.calls == ["a"], "reconciled after the delete handler took over"
    finally:
        reconcile.release.set()
        await tick.stop()


NOW = datetime(2026, 12, 7, tzinfo=timezone.utc)


def peer(priority: int, seconds_ago: float, lifetime: int = 60) -> dict[str, Any]:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - timedelta(seconds=seconds_ago)).isoformat()}


@pytest.mark.parametrize("peers,acting", [
    ({}, True),
    ({"me": peer(10, 0)}, True),
    ({"me": peer(10, 0), "other": peer(5, 0)}, True),
    ({"me": peer(10, 0), "other": peer(20, 0)}, False),
    ({"me": peer(10, 0), "other": peer(10, 0)}, False),
    ({"me": peer(10, 0), "other": peer(20, 61)}, True),
    ({"me": peer(10, 0), "other": peer(20, 4, lifetime=5)}, False),
])
def test_a_replica_acts_by_kopfs_peering_rule(peers: dict, acting: bool) -> None:
    assert acts("me", 10, peers, NOW) is acting


def leadership_reading(records: dict[str | None, bool], **fields: Any) -> tuple[Leadership, list]:
    """A Leadership whose peering records say `records` (namespace -> this replica may act);
    also returns the records it read."""
    leadership, read = Leadership("me", peering="tuneforge", **fields), []

    def reading(namespace: str | None) -> bool:
        read.append(namespace)
        return records.get(namespace, False)

    leadership._read = reading
    return leadership, read


def test_a_cluster_wide_replica_follows_its_one_record() -> None:
    leadership, read = leadership_reading({None: True})
    assert leadership.acting("team") and leadership.acting(None)
    assert read == [None], "the record was read again within a second"


def test_a_namespaced_replica_acts_only_while_every_record_it_knows_lets_it() -> None:
    leadership, _ = leadership_reading({"team-a": True, "team-b": False, "named": True},
                                       namespaces=("named", "team-*"))
    assert leadership.acting(None), "the exactly named namespace's record is known from the start"
    assert leadership.acting("team-a")
    assert not leadership.acting("team-b"), "a conflict in a namespace seen now"
    assert not leadership.acting("team-a") and not leadership.acting(None), "kopf pauses the whole operator"


def test_a_namespaced_replica_knowing_no_record_does_not_act() -> None:
    leadership, _ = leadership_reading({}, namespaces=("team-*",))
    assert not leadership.acting(None)


async def test_an_object_whose_status_write_finds_it_gone_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleted while the watch was down, it gets no DELETED event; its next write says so."""
    def gone(namespace: str | None, kind: str, name: str, status: dict) -> dict:
        raise ApiException(status=404, reason="Not Found")

    monkeypatch.setattr(kube, "patch_custom_status", gone)
    reconcile = Recorder()
    tick = ticker(reconcile)
    try:
        await see(tick, body("a"), "ADDED")
        await until(lambda: tick.tracked == 0, "still reconciling an object that is gone")
        await settle(INTERVAL * 2)
        assert reconcile.calls == ["a"]
    finally:
        await tick.stop()
