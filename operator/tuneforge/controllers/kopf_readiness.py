"""kopf's start on many objects, without its thundering herd.

Until every indexed resource has been listed, kopf holds each object's handlers: the
watcher adds a toggle per listed object to one `ToggleSet`, the object's worker drops it
once the object is indexed, and every worker waits on the set's condition for all of
them to be gone. kopf 1.45's `ToggleSet` wakes every waiter on each toggle added or
dropped, so N objects cost about N^2 wake-ups while their answer (`is_on()`) changes only
at the very end. Measured on this machine in kopf's own classes (make/drop as the watcher
and workers do): 1,000 objects 2.5 s, 2,000 12 s, 4,000 63 s of the event loop's time
before the first handler runs; at 10,000 objects an operator restart would sit for
longer than ten minutes, handling nothing.

`install()` makes adding and dropping a toggle wake the waiters only when the set's answer
changes, the one thing they wait for (a member toggle turned on or off still wakes them
itself, as before): the same 4,000 objects take 0.19 s, and 10,000 0.8 s.
It replaces two methods of a kopf class that kopf does not export, so it checks that the
class still has the shape it was written for and otherwise leaves kopf as it is;
tests/unit/controllers/test_kopf_readiness.py fails when the pinned kopf changes it.
"""

from __future__ import annotations

import logging

from kopf._cogs.aiokits import aiotoggles

logger = logging.getLogger(__name__)


async def _make_toggle(self: aiotoggles.ToggleSet, __val: bool = False, *, name: str | None = None) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        if self.is_on() != before:
            self._condition.notify_all()


def applies() -> bool:
    """Whether kopf's ToggleSet is still the class this fix was written for."""
    probe = aiotoggles.ToggleSet(all)
    return (
        isinstance(getattr(probe, "_toggles", None), set)
        and hasattr(probe, "_condition")
        and callable(getattr(probe, "is_on", None))
        and callable(getattr(aiotoggles, "Toggle", None))
    )


def install() -> bool:
    """Applies the fix (once per process); False when kopf has changed and it was not."""
    if aiotoggles.ToggleSet.make_toggle is _make_toggle:
        return True
    if not applies():
        logger.warning("kopf's ToggleSet has changed; its start on many objects is left as kopf ships it")
        return False
    aiotoggles.ToggleSet.make_toggle = _make_toggle
    aiotoggles.ToggleSet.drop_toggle = _drop_toggle
    return True
