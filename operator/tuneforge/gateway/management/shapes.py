"""Pure mappings from FineTuningJobs, BaseModels, hardware profiles and the trainer's
reports to the management API's camelCase JSON, and the list query (filter, search,
sort, offset pagination). No I/O here, so every rule is unit-tested on plain dicts.

Status mapping (docs/management-api.md): the five statuses dashboards filter on are
coarser than the phases, and requests the controller has not acted on yet show at once,
exactly as on the OpenAI routes:

    queued     ValidatingFiles, Queued, a resuming Paused job, a Failed job with a restart request
    running    Running
    completed  Succeeded
    failed     Failed
    stopped    Paused (spec.suspend) and Cancelled (spec.cancel)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tuneforge.api.v1alpha1.finetuningjob import restart_pending
from tuneforge.api.v1alpha1.labels import Annotation
from tuneforge.config import HardwareProfile
from tuneforge.contracts import BASE_LEARNING_RATE
from tuneforge.gateway.errors import bad_request

STATUSES = ("queued", "running", "completed", "failed", "stopped")
SORT_FIELDS = ("createdAt", "updatedAt", "name", "status")
DEFAULT_SORT = "createdAt:desc"


# -- status and names ------------------------------------------------------------------


def job_status(resource: Mapping[str, Any]) -> str:
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


def job_name(resource: Mapping[str, Any]) -> str:
    """spec.displayName, or the job id for jobs created without one (kubectl, OpenAI API)."""
    return resource["spec"].get("displayName") or resource["metadata"]["name"]


def updated_at(resource: Mapping[str, Any]) -> str:
    """The last write to the object, spec or status: the newest managedFields time (the
    API server stamps every writer's update), else the creation time. RFC 3339 strings of
    one format compare like the times they denote."""
    meta = resource["metadata"]
    times = [entry["time"] for entry in meta.get("managedFields") or [] if entry.get("time")]
    return max([meta["creationTimestamp"], *times])


def parse_time(value: str, param: str) -> datetime:
    """An ISO 8601 timestamp from a caller; one without a zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise bad_request(f"'{value}' is not an ISO 8601 timestamp (e.g. 2030-01-31T12:00:00Z).", param=param,
                          code="invalid_timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def kube_time(value: str) -> datetime | None:
    """An RFC 3339 time as Kubernetes writes it, nanoseconds included (Python parses at most
    microseconds, so the fraction is cut to six digits)."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", value)
    if not match:
        return None
    fraction = f".{match.group(2)[:6]}" if match.group(2) else ""
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(f"{match.group(1)}{fraction}{zone}")


# -- jobs --------------------------------------------------------------------------------


def _significant(value: float) -> float:
    """Drops float noise from unit conversions (3e-4 / 2e-4 is 1.4999999999999998)."""
    return float(f"{value:.12g}")


def learning_rate_multiplier(learning_rate: float) -> float:
    """An absolute learning rate as the multiplier of the LoRA base rate the spec stores."""
    return _significant(learning_rate / BASE_LEARNING_RATE)


def hyperparameters(resource: Mapping[str, Any]) -> dict[str, Any]:
    """What the job trains with: the trainer's resolved values once it reported them, else
    the requested ones; "auto" where the trainer still has to choose."""
    wanted = resource["spec"].get("hyperparameters") or {}
    resolved = (resource.get("status") or {}).get("hyperparameters") or {}
    multiplier = resolved.get("learningRateMultiplier") or wanted.get("learningRateMultiplier", "auto")
    return {
        "epochs": resolved.get("nEpochs") or wanted.get("nEpochs", "auto"),
        "learningRate": "auto" if multiplier == "auto" else _significant(float(multiplier) * BASE_LEARNING_RATE),
        "batchSize": resolved.get("batchSize") or wanted.get("batchSize", "auto"),
        "warmupSteps": wanted.get("warmupSteps"),
        "warmupRatio": None if wanted.get("warmupSteps") is not None else wanted.get("warmupRatio", 0.03),
    }


def job_summary(resource: Mapping[str, Any]) -> dict[str, Any]:
    meta, spec, status = resource["metadata"], resource["spec"], resource.get("status") or {}
    return {
        "id": meta["name"],
        "name": job_name(resource),
        "baseModel": spec["baseModel"],
        "status": job_status(resource),
        "description": spec.get("description"),
        "owner": (meta.get("annotations") or {}).get(Annotation.CREATED_BY),
        "organizationId": meta["namespace"],
        "trainedTokens": status.get("trainedTokens"),
        "startedAt": status.get("startedAt"),
        "finishedAt": status.get("finishedAt"),
        "createdAt": meta["creationTimestamp"],
        "updatedAt": updated_at(resource),
    }


def job_detail(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The full job: the summary plus what was asked for and what came out."""
    spec, status = resource["spec"], resource.get("status") or {}
    error = status.get("error")
    progress = status.get("progress") or {}
    metrics = status.get("metrics") or {}
    return {
        **job_summary(resource),
        "trainingDataset": spec["trainingFile"],
        "validationFile": spec.get("validationFile"),
        "suffix": spec.get("suffix"),
        "hyperparameters": hyperparameters(resource),
        "resultModel": status.get("fineTunedModel"),
        "error": {"code": error["code"], "message": error["message"], "param": error.get("param")} if error else None,
        "metrics": {
            "trainingLoss": metrics.get("trainLoss"),
            "validationLoss": metrics.get("validLoss"),
            "epoch": progress.get("epoch"),
        },
        "progress": {"step": progress.get("step"), "totalSteps": progress.get("totalSteps")},
        "restarts": status.get("restarts") or 0,
        "estimatedFinish": progress.get("estimatedFinish"),
    }


# -- listing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    statuses: frozenset[str] | None = None
    base_model: str | None = None
    search: str | None = None
    sort_field: str = "createdAt"
    descending: bool = True
    limit: int = 20
    offset: int = 0


def parse_sort(value: str) -> tuple[str, bool]:
    """`field` or `field:asc|desc` -> (field, descending); anything else is a 400."""
    field, separator, direction = value.strip().partition(":")
    if field not in SORT_FIELDS or direction not in (("asc", "desc") if separator else ("",)):
        raise bad_request(f"sort must be <field>[:asc|:desc] with field one of {', '.join(SORT_FIELDS)}; got "
                          f"'{value}'.", param="sort", code="invalid_sort")
    return field, direction != "asc"


def parse_statuses(value: str) -> frozenset[str]:
    """One status or several, comma-separated; unknown ones are a 400."""
    wanted = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = sorted(wanted - set(STATUSES))
    if unknown or not wanted:
        raise bad_request(f"status must be one or more of {', '.join(STATUSES)}; got '{value}'.", param="status",
                          code="invalid_status")
    return wanted


def _sort_key(resource: Mapping[str, Any], field: str) -> tuple:
    value = {
        "createdAt": lambda: resource["metadata"]["creationTimestamp"],
        "updatedAt": lambda: updated_at(resource),
        "name": lambda: job_name(resource).casefold(),
        "status": lambda: job_status(resource),
    }[field]()
    return value, resource["metadata"]["creationTimestamp"], resource["metadata"]["name"]


def select_jobs(resources: Iterable[Mapping[str, Any]], query: ListQuery) -> tuple[int, list[Mapping[str, Any]]]:
    """(how many match, the page of them) after filters, search and sort. Ties sort by
    creation time and id so pages never overlap."""
    needle = query.search.casefold() if query.search else None
    matched = [
        r for r in resources
        if (query.statuses is None or job_status(r) in query.statuses)
        and (query.base_model is None or r["spec"]["baseModel"] == query.base_model)
        and (needle is None or needle in job_name(r).casefold() or needle in (r["spec"].get("description") or "").casefold())
    ]
    matched.sort(key=lambda r: _sort_key(r, query.sort_field), reverse=query.descending)
    return len(matched), matched[query.offset : query.offset + query.limit]


def stats(resources: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for resource in resources:
        counts[job_status(resource)] += 1
    return {"total": sum(counts.values()), **counts}


# -- metrics -----------------------------------------------------------------------------


def total_epochs(resource: Mapping[str, Any]) -> int | None:
    """The trainer's resolved epochs, else the requested number, else what the progress
    implies (total steps over steps per epoch, where steps per epoch = step / epoch)."""
    status = resource.get("status") or {}
    resolved = (status.get("hyperparameters") or {}).get("nEpochs")
    if resolved:
        return int(resolved)
    wanted = (resource["spec"].get("hyperparameters") or {}).get("nEpochs", "auto")
    if wanted != "auto":
        return int(wanted)
    progress = status.get("progress") or {}
    step, epoch, total = progress.get("step"), progress.get("epoch"), progress.get("totalSteps")
    if step and epoch and total:
        return round(total * epoch / step)
    return None


def _validation_loss(record: Mapping[str, Any]) -> float | None:
    value = record.get("valid_loss")
    return value if value is not None else record.get("full_valid_loss")


def metrics_view(resource: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Latest values and the per-step curve from the metric records, one per step in
    ascending order (`JobFiles.metrics_by_step`); the store's records win over the status
    copy, which the controller refreshes only every few seconds."""
    status = resource.get("status") or {}
    summary = status.get("metrics") or {}
    progress = status.get("progress") or {}
    latest = records[-1] if records else {}
    validation = [value for r in records if (value := _validation_loss(r)) is not None]
    return {
        "jobId": resource["metadata"]["name"],
        "trainingLoss": latest.get("train_loss", summary.get("trainLoss")),
        "validationLoss": validation[-1] if validation else summary.get("validLoss"),
        "currentEpoch": latest.get("epoch", progress.get("epoch")),
        "totalEpochs": total_epochs(resource),
        "trainedTokens": status.get("trainedTokens") if status.get("trainedTokens") is not None
        else latest.get("trained_tokens"),
        "steps": [
            {"step": int(r["step"]), "trainingLoss": r.get("train_loss"), "validationLoss": _validation_loss(r),
             "learningRate": r.get("learning_rate")}
            for r in records
        ],
    }


# -- logs --------------------------------------------------------------------------------

_LEVEL_WORD = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b")
_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning", "error": "error",
           "critical": "error", "fatal": "error"}


def _level(message: str) -> str:
    """The severity of one line of trainer output: a JSON line's own level (the trainer's
    termination message {code, message} is an error), a traceback, or a logging level word
    near the start of the line; plain output is info."""
    text = message.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            named = data.get("level") or data.get("levelname") or data.get("severity")
            if isinstance(named, str) and named.lower() in _LEVELS:
                return _LEVELS[named.lower()]
            if data.get("code") and data.get("message"):
                return "error"
    if text.startswith("Traceback (most recent call last)"):
        return "error"
    match = _LEVEL_WORD.search(text[:80])
    return _LEVELS[match.group(1).lower()] if match else "info"


def pod_log_entries(text: str, *, since: datetime | None = None) -> list[dict[str, Any]]:
    """`kubectl logs --timestamps` output as entries, those at or after `since`; a line
    without a timestamp (none is expected) keeps its text with a null timestamp."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        stamp, _, message = line.partition(" ")
        moment = kube_time(stamp)
        if moment is None:
            stamp, message = None, line
        elif since is not None and moment < since:
            continue
        entries.append({"timestamp": stamp, "level": _level(message), "message": message})
    return entries


def event_log_entries(events: Iterable[Mapping[str, Any]], *, since: datetime | None, lines: int) -> list[dict[str, Any]]:
    """The trainer's event records as log entries, oldest first: those at or after
    `since`, at most the newest `lines`."""
    entries = []
    for event in events:
        created = datetime.fromtimestamp(int(event.get("created_at") or 0), tz=timezone.utc)
        if since is not None and created < since:
            continue
        level = str(event.get("level") or "info").lower()
        entries.append({"timestamp": rfc3339(created), "level": _LEVELS.get(level, "info"),
                        "message": str(event.get("message", ""))})
    return entries[-lines:] if lines else []


def newest_pod(pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The trainer Pod to read: the newest one (a resumed or restarted run makes new Pods),
    preferring Pods not being deleted."""
    ranked = sorted(pods, key=lambda p: (not p["metadata"].get("deletionTimestamp"),
                                         p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
    return ranked[-1] if ranked else None


# -- catalog and hardware ----------------------------------------------------------------


def is_offered_base_model(resource: Mapping[str, Any]) -> bool:
    return resource["spec"].get("fineTunable", True) and (resource.get("status") or {}).get("phase") == "Ready"


def base_model_entry(resource: Mapping[str, Any]) -> dict[str, Any]:
    spec = resource["spec"]
    return {
        "id": resource["metadata"]["name"],
        "name": spec.get("displayName") or resource["metadata"]["name"],
        "provider": spec.get("provider"),
        "description": spec.get("description"),
        "parameterCount": spec.get("parameterCount"),
        "supportedTasks": spec.get("supportedTasks") or ["chat"],
        "maxSequenceLength": spec.get("maxContextLength", 2048),
        "defaultHardware": spec.get("defaultHardware"),
    }


def hardware_entry(profile: HardwareProfile, default: str | None) -> dict[str, Any]:
    return {
        "id": profile.name,
        "name": profile.display_name or profile.name,
        "gpuType": profile.gpu_type,
        "gpuCount": profile.gpu_count,
        "gpuMemory": profile.gpu_memory_gb,
        "cpu": profile.cpu,
        "memory": profile.memory,
        "costPerHour": profile.cost_per_hour,
        "currency": profile.currency,
        "default": profile.name == default,
    }
