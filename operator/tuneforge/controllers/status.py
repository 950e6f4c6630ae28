"""Status rules every kind shares: conditions, phases, and how often status is written.

Conditions follow metav1.Condition: `lastTransitionTime` moves only when `status` changes
(so "Running since" stays true while the reason or message is refreshed), and each carries
the generation it was computed from. Status patches contain only what changed, and
high-frequency fields (training progress) are throttled per object, so a thousand running
jobs do not turn into a thousand writes a second.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from datetime import datetime, timezone
from typing import Any

import kopf

from tuneforge.api.v1alpha1 import batchjob, finetuningjob

FINE_TUNING_TERMINAL = finetuningjob.TERMINAL_PHASES
BATCH_TERMINAL = batchjob.TERMINAL_PHASES

FINE_TUNING_OPENAI_STATUS = finetuningjob.OPENAI_STATUS
BATCH_OPENAI_STATUS = batchjob.OPENAI_STATUS
BATCH_PHASE_FROM_OPENAI = {value: key for key, value in BATCH_OPENAI_STATUS.items()}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return (moment or utcnow()).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def find_condition(conditions: list[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for condition in conditions or []:
        if condition.get("type") == type_:
            return condition
    return None


def set_condition(
    conditions: list[Mapping[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """A new condition list with `type_` set; its lastTransitionTime is kept unless the
    status value itself changes. Other conditions are kept in place."""
    value = {True: "True", False: "False"}.get(status, status) if isinstance(status, bool) else status
    previous = find_condition(conditions, type_)
    changed = previous is None or previous.get("status") != value
    condition = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": timestamp(now) if changed else previous["lastTransitionTime"],
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    result = [dict(c) for c in conditions or [] if c.get("type") != type_]
    position = next((i for i, c in enumerate(conditions or []) if c.get("type") == type_), len(result))
    result.insert(position, condition)
    return result


def diff(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status fields of `desired` that differ from `current`: the merge
    patch that brings status up to date, empty when nothing changed (then nothing is
    written at all)."""
    current = current or {}
    return {key: value for key, value in desired.items() if current.get(key) != value}


class Throttle:
    """At most one write per key per `interval` seconds, for fields that change often.

    Transitions never go through a throttle; only the refresh of values like progress
    does, so a phase change is visible at once while progress lags by at most `interval`.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[Hashable, float] = {}

    def ready(self, key: Hashable) -> bool:
        """Whether `key` may write now; if so, the write is counted as done."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True

    def forget(self, key: Hashable) -> None:
        self._last.pop(key, None)


class ReconcileState:
    """The status one reconcile builds from the observed one, posting an Event for each
    phase transition as it is decided (the status patch follows at the end)."""

    def __init__(self, raw: dict[str, Any], status: Mapping[str, Any]) -> None:
        self.raw = raw
        self.status = dict(status)
        self.generation = raw["metadata"].get("generation")

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")

    def condition(self, type_: str, value: bool | str, reason: str, message: str = "") -> None:
        self.status["conditions"] = set_condition(
            self.status.get("conditions"), type_, value, reason, message, generation=self.generation
        )

    def transition(self, phase: str, reason: str, message: str, *, warning: bool = False) -> bool:
        """Moves to `phase`; False (and no Event) when already there."""
        if self.phase == phase:
            return False
        self.status["phase"] = phase
        (kopf.warn if warning else kopf.info)(self.raw, reason=reason, message=message)
        return True
