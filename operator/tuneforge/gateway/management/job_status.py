"""The management API's job status, one of five that dashboards filter on. They are
coarser than the phases, and requests the controller has not acted on yet show at once,
exactly as on the OpenAI routes (docs/management-api.md):

    queued     ValidatingFiles, Queued, a resuming Paused job, a Failed job with a restart request
    running    Running
    completed  Succeeded
    failed     Failed
    stopped    Paused (spec.suspend) and Cancelled (spec.cancel)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from tuneforge.api.v1alpha1.finetuningjob import restart_pending
from tuneforge.gateway.management.protocol import JobStatus

STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)


def job_status(resource: Mapping[str, Any]) -> JobStatus:
    """One of STATUSES, with spec.cancel, spec.suspend and restart requests shown at once."""
    spec, status = resource["spec"], resource.get("status") or {}
    phase = status.get("phase")
    if phase == "Succeeded":
        return "completed"
    if phase == "Failed" and not restart_pending(spec, status):
        return "failed"
    if phase == "Cancelled" or spec.get("cancel") or spec.get("suspend"):
        return "stopped"
    if phase == "Running":
        return "running"
    return "queued"
