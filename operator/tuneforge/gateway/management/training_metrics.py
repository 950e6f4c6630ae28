"""A job's training metrics as the management API shows them: the latest values and the
per-step curve, from the trainer's metric records with the job's status as the fallback.
Pure, so which source wins is tested on plain records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tuneforge.gateway.management.protocol import JobMetrics, JobMetricsValues, MetricsPoint


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


def metrics_view(resource: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> JobMetrics:
    """Latest values and the per-step curve from the metric records, one per step in
    ascending order (`JobFiles.metrics_by_step`); the store's records win over the status
    copy, which the controller refreshes only every few seconds."""
    status = resource.get("status") or {}
    summary = status.get("metrics") or {}
    progress = status.get("progress") or {}
    latest = records[-1] if records else {}
    validation = [value for r in records if (value := _validation_loss(r)) is not None]
    return JobMetrics(job_id=resource["metadata"]["name"], metrics=JobMetricsValues(
        training_loss=latest.get("train_loss", summary.get("trainLoss")),
        validation_loss=validation[-1] if validation else summary.get("validLoss"),
        current_epoch=latest.get("epoch", progress.get("epoch")),
        total_epochs=total_epochs(resource),
        trained_tokens=status.get("trainedTokens") if status.get("trainedTokens") is not None
        else latest.get("trained_tokens"),
        steps=[
            MetricsPoint(step=int(r["step"]), training_loss=r.get("train_loss"), validation_loss=_validation_loss(r),
                         learning_rate=r.get("learning_rate"), tokens_per_second=r.get("tokens_per_second"))
            for r in records
        ],
    ))
