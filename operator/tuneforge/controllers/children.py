"""In-memory views of the Jobs, Pods and Deployments the operator owns (kopf indexes).

The controllers poll their objects on a ticker; reading child state from these indexes
(kept current by watch streams) instead of the API server makes a poll free, so a
thousand queued jobs cost no API calls while they wait. The summaries are pure
functions of one object, keyed by (component, namespace, owner name).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tuneforge.api.v1alpha1.common import ApiError
from tuneforge.api.v1alpha1.labels import Annotation, Label, PortName
from tuneforge.contracts import TrainerExit
from tuneforge.controllers.builders import FATAL_EXIT_CODES
from tuneforge.controllers.status import parse_timestamp

OWNER_LABELS = (Label.FINE_TUNING_JOB, Label.BATCH_JOB, Label.MODEL_DEPLOYMENT)
Key = tuple[str, str, str]


def owner_key(namespace: str, labels: Mapping[str, str]) -> Key | None:
    for label in OWNER_LABELS:
        if label in labels:
            return (labels.get(Label.COMPONENT, ""), namespace, labels[label])
    return None


def _true_conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}


def job_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a controller needs to know about a batch/v1 Job."""
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    conditions = _true_conditions(status)
    failed = conditions.get("Failed") or conditions.get("FailureTarget")
    return {
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "created": meta.get("creationTimestamp", ""),
        "deleting": bool(meta.get("deletionTimestamp")),
        "suspended": bool(spec.get("suspend")),
        "started": bool(status.get("startTime")),
        "complete": "Complete" in conditions or "SuccessCriteriaMet" in conditions,
        "failed": failed is not None,
        "failure_reason": (failed or {}).get("reason", ""),
        "failure_message": (failed or {}).get("message", ""),
        "active": status.get("active") or 0,
        "parallelism": spec.get("parallelism", 1),
        "indexed": spec.get("completionMode") == "Indexed",
    }


def short_of_pods(job: Mapping[str, Any]) -> bool:
    """Whether the Job controller should have created Pods that are not there: the Job is
    running (it has a startTime, which the controller sets before creating any Pod, and it
    is neither suspended nor finished) with fewer active Pods than it runs at once. Only
    then is it worth reading the Job's Events for a refusal."""
    return (
        job["started"] and not (job["suspended"] or job["complete"] or job["failed"] or job["deleting"])
        and job["active"] < job["parallelism"]
    )


_CREATE_REASONS = {"FailedCreate": False, "SuccessfulCreate": True}
_EVENT_PREFIXES = ("(combined from similar events): ", "Error creating: ")


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    """When an Event last happened: events.k8s.io Events keep it in their series."""
    series = event.get("series") or {}
    moment = (series.get("lastObservedTime") or event.get("lastTimestamp") or event.get("eventTime")
              or event.get("firstTimestamp") or (event.get("metadata") or {}).get("creationTimestamp"))
    return parse_timestamp(moment)


def pod_creation_refusal(events: Iterable[Mapping[str, Any]]) -> str | None:
    """The API server's refusal of the controller's newest attempt to create a Pod, from the
    Events of its Job or ReplicaSet (`FailedCreate`: Pod Security, a quota, a webhook...);
    None when the newest attempt succeeded or none is recorded. A success in the same
    second as a refusal wins: Event times have second precision."""
    attempts = [(moment, _CREATE_REASONS[e["reason"]], e) for e in events if e.get("reason") in _CREATE_REASONS
                for moment in [_event_time(e)] if moment is not None]
    if not attempts:
        return None
    _, created, newest = max(attempts, key=lambda attempt: attempt[:2])
    if created:
        return None
    message = newest.get("message") or "the Pod was refused"
    for prefix in _EVENT_PREFIXES:
        message = message.removeprefix(prefix)
    return message


def pod_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Pod's phase and, once its first container has terminated, how it ended; while it
    is ready, the address of its `http` port (a serving Pod's engine, whose load the
    autoscaler reads)."""
    status = body.get("status") or {}
    terminated = None
    for container in status.get("containerStatuses") or []:
        state = (container.get("state") or {}).get("terminated")
        if state:
            terminated = {
                "exit_code": state.get("exitCode"),
                "reason": state.get("reason", ""),
                "message": state.get("message", ""),
            }
            break
    ready = "Ready" in _true_conditions(status) and not body["metadata"].get("deletionTimestamp")
    ports = [port for container in (body.get("spec") or {}).get("containers") or []
             for port in container.get("ports") or []]
    http = next((port["containerPort"] for port in ports if port.get("name") == PortName.HTTP), None)
    return {
        "name": body["metadata"]["name"],
        "phase": status.get("phase", "Pending"),
        "created": body["metadata"].get("creationTimestamp", ""),
        "terminated": terminated,
        "disrupted": "DisruptionTarget" in _true_conditions(status),
        "address": f"{status['podIP']}:{http}" if ready and http and status.get("podIP") else None,
    }


def deployment_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing") or {}
    return {
        "name": meta["name"],
        "hash": (meta.get("annotations") or {}).get(Annotation.SPEC_HASH),
        "generation": meta.get("generation", 0),
        "observed_generation": status.get("observedGeneration", 0),
        "desired": spec.get("replicas", 1),
        "replicas": status.get("replicas") or 0,
        "updated": status.get("updatedReplicas") or 0,
        "ready": status.get("readyReplicas") or 0,
        "available": status.get("availableReplicas") or 0,
        "deadline_exceeded": progressing.get("reason") == "ProgressDeadlineExceeded",
        "replica_failure": _replica_failure(conditions.get("ReplicaFailure")),
    }


def _replica_failure(condition: Mapping[str, Any] | None) -> str | None:
    """Why the ReplicaSet controller could not create a Pod, as the Deployment controller
    copies it from the ReplicaSet (the API server's refusal); None while Pods are created."""
    if condition is None or condition.get("status") != "True":
        return None
    return condition.get("message") or condition.get("reason") or "FailedCreate"


def workload_key(namespace: str, body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, Job name) of the batch/v1 Job a Kueue Workload stands for."""
    for owner in body["metadata"].get("ownerReferences") or ():
        if owner.get("kind") == "Job" and owner.get("apiVersion") == "batch/v1":
            return (namespace, owner["name"])
    return None


def workload_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """What Kueue says about a Job it queues: admitted or not, and why not in Kueue's own
    words (quota it waits for, the workload that preempted it). Eviction outranks the
    pending reason: a preempted Workload is also pending again, and being preempted is
    what its owner needs to hear."""
    status = body.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    admitted = (conditions.get("Admitted") or {}).get("status") == "True"
    evicted = conditions.get("Evicted") if (conditions.get("Evicted") or {}).get("status") == "True" else None
    pending = conditions.get("QuotaReserved") or {}
    if evicted is not None:
        reason, message = evicted.get("reason") or "Evicted", evicted.get("message") or "evicted by Kueue"
    elif pending.get("status") == "False":
        reason, message = pending.get("reason") or "Pending", pending.get("message") or "waiting for quota"
    else:
        reason, message = "Pending", "waiting for Kueue to consider the workload"
    return {
        "cluster_queue": ((status.get("admission") or {}).get("clusterQueue") or ""),
        "admitted": admitted,
        "reason": "Admitted" if admitted else reason,
        "message": "" if admitted else message,
    }


def first(values: Iterable[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The one summary under a key (deterministic names: there is at most one child)."""
    for value in values or ():
        return value
    return None


_EXIT_CODE = re.compile(r"failed with exit code (-?\d+)")


@dataclass(frozen=True)
class GroupFailure:
    """Why a multi-node trainer Job failed, as far as replacing its group is concerned."""

    fatal: bool
    """A Pod exited with one of the trainer's fatal codes: a new group would fail alike."""
    disrupted: bool
    """A Pod was disrupted (preemption, drain): not the job's fault, not counted."""


def group_failure(job: Mapping[str, Any], pods: Iterable[dict[str, Any]] | None) -> GroupFailure:
    """Reads a failed Indexed trainer Job. The podFailurePolicy rule that failed it names the
    exit code or the DisruptionTarget condition in the Job's condition message; the Pods
    (whose watch may trail the Job's) confirm it, so either source alone decides."""
    message = job.get("failure_message") or ""
    code = _EXIT_CODE.search(message)
    codes = {int(code.group(1))} if code else set()
    pods = list(pods or ())
    codes |= {p["terminated"]["exit_code"] for p in pods if p["phase"] == "Failed" and p.get("terminated")}
    disrupted = "condition DisruptionTarget" in message or any(p.get("disrupted") for p in pods)
    return GroupFailure(fatal=bool(codes & set(FATAL_EXIT_CODES)), disrupted=disrupted)


def failed_first(pods: Iterable[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The Pods that ended on their own: when a group fails, the Job controller stops the
    other Pods, whose SIGTERM exit (TrainerExit.preempted) says nothing about the cause."""
    pods = list(pods or ())
    own = [p for p in pods if (p.get("terminated") or {}).get("exit_code") != TrainerExit.preempted]
    return own or pods


def termination_error(pods: Iterable[dict[str, Any]] | None, *, default_code: str, fallback: str) -> ApiError:
    """The error a failed image reported: its termination message is one line of JSON in
    OpenAI's error shape; anything else (a traceback from FallbackToLogsOnError, an OOM
    kill) is kept as the message under `default_code`. The newest terminated Pod wins."""
    ended = sorted((p for p in pods or () if p.get("terminated")), key=lambda p: p["created"])
    if not ended:
        return ApiError(code=default_code, message=fallback)
    state = ended[-1]["terminated"]
    text = (state.get("message") or "").strip()
    if text:
        try:
            data = json.loads(text.splitlines()[-1])
            if isinstance(data, dict) and data.get("code") and data.get("message"):
                return ApiError(code=str(data["code"]), message=str(data["message"]), param=data.get("param"))
        except ValueError:
            pass
        return ApiError(code=default_code, message=text[-2000:])
    reason = state.get("reason") or "Error"
    return ApiError(code=default_code, message=f"{fallback} ({reason}, exit code {state.get('exit_code')})")
