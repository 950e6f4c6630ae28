"""Pods the API server refuses to create, surfaced on the resource that wanted them.

When Pod Security admission, a ResourceQuota or a validating webhook refuses the Pods of
a trainer or batch runner Job, no Pod exists to report anything: the Job controller only
records `FailedCreate` Events on the Job and tries again with back-off. The job would sit
in Queued with no reason shown. `follow` turns those Events into the `PodsAdmitted`
condition (False, reason PodCreationRefused, the API server's refusal as its message) and
a Warning Event on the resource, clears it once Pods are created, and hands back an error
once the refusals have outlasted `pod_admission_timeout`, for the caller to fail with: a
quota raised or a namespace label fixed in the meantime lets the job run after all.

The Events are read only while the Job is short of Pods (`children.short_of_pods`), so a
job whose Pods exist, or whose Job the controller has not started, costs no API call. A
serving Deployment needs no Events: the Deployment controller copies the ReplicaSet's
refusal into its ReplicaFailure condition, which `recorded` turns into the same
PodsAdmitted condition; its progress deadline fails a rollout whose Pods never come.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from tuneforge.api.v1alpha1.common import PODS_ADMITTED, ApiError
from tuneforge.controllers import kube
from tuneforge.controllers.children import pod_creation_refusal, short_of_pods
from tuneforge.controllers.status import (
    ReconcileState,
    find_condition,
    parse_timestamp,
    set_condition,
    utcnow,
)

CONDITION = PODS_ADMITTED
REFUSED = "PodCreationRefused"
CREATED = "PodsCreated"
ERROR_CODE = "pod_creation_refused"
"""The error code of a job failed because its Pods were refused (`error.code` of the
OpenAI fine-tuning job, `errors.data[].code` of the batch)."""


def recorded(raw: Mapping[str, Any], conditions: list[Mapping[str, Any]] | None, refusal: str | None, *,
             what: str, generation: int | None) -> list[Mapping[str, Any]] | None:
    """`conditions` with PodsAdmitted following the newest refusal (None: Pods are being
    created), and an Event on `raw` when it turns. A resource whose Pods were never
    refused gets no PodsAdmitted condition at all: its conditions come back as they were."""
    previous = find_condition(conditions, CONDITION)
    was_refused = previous is not None and previous.get("status") == "False"
    if refusal is None:
        if not was_refused:
            return conditions
        kopf.info(raw, reason=CREATED, message=f"the {what} Pods are being created")
        return set_condition(conditions, CONDITION, True, CREATED, f"the {what} Pods are being created",
                             generation=generation)
    if not was_refused:
        kopf.warn(raw, reason=REFUSED, message=f"the {what} Pod was refused: {refusal}")
    return set_condition(conditions, CONDITION, False, REFUSED, refusal, generation=generation)


def follow(state: ReconcileState, namespace: str, job: Mapping[str, Any], *, what: str,
           timeout: float) -> ApiError | None:
    """Brings the PodsAdmitted condition up to date with the Job's Events; returns the
    error to fail with once its Pods have been refused for longer than `timeout`
    seconds, counted from the refusal first seen, or from the Job's creation when an
    earlier Job of the resource (before a pause or restart) was refused already."""
    refusal = pod_creation_refusal(kube.events_of(namespace, job["uid"])) if short_of_pods(job) else None
    state.status["conditions"] = recorded(state.raw, state.status.get("conditions"), refusal, what=what,
                                          generation=state.generation)
    if refusal is None:
        return None
    condition = find_condition(state.status["conditions"], CONDITION)
    moments = (parse_timestamp(condition["lastTransitionTime"]), parse_timestamp(job["created"]))
    since = max(moment for moment in moments if moment is not None)
    if (utcnow() - since).total_seconds() < timeout:
        return None
    return ApiError(code=ERROR_CODE, message=f"the {what} Pods were refused for {timeout:g}s: {refusal}")
