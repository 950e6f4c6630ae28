"""Kueue's verdict on a child Job, shown on the resource that owns it.

A trainer or batch-runner Job handed to Kueue (its queue-name label, or a namespace's
default LocalQueue) stays suspended until Kueue admits it, and Kueue suspends it again to
preempt it. Kueue explains itself on the Job's Workload (tuneforge.controllers.children
.workload_summary); the owner gets that explanation as its Admitted condition and as an
Event each time it changes, so `kubectl describe` and Argo CD show why a job waits, and a
FineTuningJob as a job event, so the OpenAI API's event list shows it too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kopf

from tuneforge.controllers.status import ReconcileState, find_condition

ADMITTED = "Admitted"
_SUSPENDED_UNEXPLAINED = "Suspended"
"""The reason when a Job is suspended and no Workload explains it (Kueue not installed, or
its Workload not seen yet)."""
_QUIET_REASONS = {ADMITTED, "Pending", "QuotaReserved"}
"""Kueue's ordinary reasons; any other (Preempted, InactiveWorkload, PodsReadyTimeout...)
means Kueue took the Job away and is posted as a Warning."""


def follow(state: ReconcileState, job: Mapping[str, Any], workload: Mapping[str, Any] | None, *, what: str,
           on_change: Callable[[str, str, bool], None] | None = None) -> bool:
    """Records Kueue's verdict on `job` in the Admitted condition (with an Event, and a call
    of `on_change(reason, message, warning)`, when it changes); True while the Job is held
    suspended. Jobs Kueue never saw get no condition."""
    held = bool(job["suspended"])
    if workload is None and not held:
        return False
    if not held:
        queue = workload.get("cluster_queue")
        reason, message = ADMITTED, f"the {what} was admitted by Kueue" + (f" in ClusterQueue {queue}" if queue else "")
    elif workload is not None:
        reason, message = workload["reason"], workload["message"]
    else:
        reason, message = _SUSPENDED_UNEXPLAINED, f"the {what} Job is suspended, waiting for its queue to admit it"
    previous = find_condition(state.status.get("conditions"), ADMITTED) or {}
    if (previous.get("reason"), previous.get("message")) != (reason, message):
        quiet = reason in _QUIET_REASONS or reason == _SUSPENDED_UNEXPLAINED
        (kopf.info if quiet else kopf.warn)(state.raw, reason=f"Kueue{reason}", message=message)
        if on_change is not None:
            on_change(reason, message, not quiet)
    state.condition(ADMITTED, not held, reason, message)
    return held
