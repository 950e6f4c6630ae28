"""The fix to kopf's start on many objects: fewer wake-ups, the same answers."""

from __future__ import annotations

import asyncio

import pytest
from kopf._cogs.aiokits import aiotoggles

from tuneforge.controllers import kopf_readiness


@pytest.fixture(autouse=True)
def installed() -> None:
    assert kopf_readiness.install(), "the pinned kopf's ToggleSet no longer has the shape the fix was written for"


class Counting(asyncio.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def notify_all(self) -> None:
        self.wakeups += 1
        super().notify_all()


async def test_waiters_are_woken_once_when_the_last_object_is_indexed() -> None:
    gate = aiotoggles.ToggleSet(all)
    gate._condition = Counting()
    toggles = [await gate.make_toggle(name=f"object-{i}") for i in range(100)]
    waiters = [asyncio.ensure_future(gate.wait_for(True)) for _ in range(100)]
    await asyncio.sleep(0)
    for toggle in toggles[:-1]:
        await gate.drop_toggle(toggle)
    await asyncio.sleep(0)
    assert not any(waiter.done() for waiter in waiters), "released before every object was indexed"
    assert gate._condition.wakeups == 1, "only closing the gate may wake them: not more toggles, not a drop"
    await gate.drop_toggle(toggles[-1])
    await asyncio.wait_for(asyncio.gather(*waiters), 2)
    assert gate._condition.wakeups == 2


async def test_adding_an_off_toggle_to_an_open_gate_still_wakes_who_waits_for_it_closed() -> None:
    gate = aiotoggles.ToggleSet(all)
    closed = asyncio.ensure_future(gate.wait_for(False))
    await asyncio.sleep(0)
    assert not closed.done()
    toggle = await gate.make_toggle(name="listing")
    await asyncio.wait_for(closed, 2)
    reopened = asyncio.ensure_future(gate.wait_for(True))
    await gate.drop_toggle(toggle)
    await asyncio.wait_for(reopened, 2)


async def test_a_member_turned_on_wakes_the_waiters_as_before() -> None:
    paused = aiotoggles.ToggleSet(any)
    conflict = await paused.make_toggle(True, name="peering")
    resumed = asyncio.ensure_future(paused.wait_for(False))
    await asyncio.sleep(0)
    assert not resumed.done()
    await conflict.turn_to(False)
    await asyncio.wait_for(resumed, 2)
