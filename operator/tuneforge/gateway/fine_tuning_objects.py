"""FineTuningJobs and the trainer's reports as OpenAI objects. Pure, so the mapping of
phases, requests not yet acted on and resolved hyperparameters is tested on plain dicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tuneforge.api.v1alpha1 import finetuningjob
from tuneforge.gateway.openai_protocol import (
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobError,
    FineTuningJobEvent,
    FineTuningJobHyperparameters,
    FineTuningJobMethod,
    SupervisedMethod,
)
from tuneforge.gateway.result_files import result_file_ids
from tuneforge.gateway.times import unix

CHECKPOINT_METRICS = ("train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                      "full_valid_loss", "full_valid_mean_token_accuracy")


def openai_status(resource: Mapping[str, Any]) -> str:
    """The OpenAI status: the controller's phase, with spec.cancel / spec.suspend and a
    restart request shown at once (the controller acts on them within a poll interval)."""
    spec, status = resource["spec"], resource.get("status") or {}
    phase = status.get("phase")
    if phase in finetuningjob.TERMINAL_PHASES and not finetuningjob.restart_pending(spec, status):
        return finetuningjob.OPENAI_STATUS[phase]
    if spec.get("cancel"):
        return "cancelled"
    if spec.get("suspend"):
        return "paused"
    if phase in ("Paused", "Failed"):
        return "queued"
    return finetuningjob.OPENAI_STATUS.get(phase, "validating_files")


def job_object(resource: Mapping[str, Any], *, base_model_id: str | None = None) -> FineTuningJob:
    """The job as OpenAI shows it; `model` is the base's model id (`ModelCatalog.model_id`
    of spec.baseModel, the resource name), which the routes look up in the catalog."""
    meta, spec, status = resource["metadata"], resource["spec"], resource.get("status") or {}
    wanted = spec.get("hyperparameters") or {}
    resolved = status.get("hyperparameters") or {}
    hyperparameters = FineTuningJobHyperparameters(
        n_epochs=resolved.get("nEpochs") or wanted.get("nEpochs", "auto"),
        batch_size=resolved.get("batchSize") or wanted.get("batchSize", "auto"),
        learning_rate_multiplier=resolved.get("learningRateMultiplier") or wanted.get("learningRateMultiplier", "auto"),
    )
    error = status.get("error")
    progress = status.get("progress") or {}
    return FineTuningJob(
        id=meta["name"],
        created_at=unix(meta["creationTimestamp"]),
        model=base_model_id or spec["baseModel"],
        organization_id=meta["namespace"],
        status=openai_status(resource),
        fine_tuned_model=status.get("fineTunedModel"),
        finished_at=unix(status.get("finishedAt")),
        error=FineTuningJobError.model_validate(error) if error else None,
        hyperparameters=hyperparameters,
        method=FineTuningJobMethod(supervised=SupervisedMethod(hyperparameters=hyperparameters)),
        result_files=result_file_ids(resource),
        seed=wanted.get("seed", 42),
        trained_tokens=status.get("trainedTokens"),
        training_file=spec["trainingFile"],
        validation_file=spec.get("validationFile"),
        estimated_finish=unix(progress.get("estimatedFinish")),
        metadata=spec.get("metadata"),
        user_provided_suffix=spec.get("suffix"),
    )


def _short_id(job: str) -> str:
    return job.removeprefix(finetuningjob.JOB_NAME_PREFIX)


def event_objects(job: str, records: Sequence[Mapping[str, Any]]) -> list[FineTuningJobEvent]:
    """The trainer's event records (oldest first) as events, newest first; a record without
    an id gets one from its position, which never changes as the log only grows."""
    events = [
        FineTuningJobEvent(
            id=record.get("id") or f"ftevent-{_short_id(job)}-{number}",
            created_at=int(record.get("created_at") or 0),
            level=record.get("level", "info"),
            message=record.get("message", ""),
            type=record.get("type", "message"),
            data=record.get("data") or {},
        )
        for number, record in enumerate(records, start=1)
    ]
    events.reverse()
    return events


def checkpoint_model(resource: Mapping[str, Any], base_model_id: str) -> str:
    """The fine-tuned model id the checkpoints are named after, known before the job
    succeeds: the one the controller will record, from the base's model id."""
    meta, spec = resource["metadata"], resource["spec"]
    return (resource.get("status") or {}).get("fineTunedModel") or finetuningjob.fine_tuned_model_id(
        base_model_id, meta["namespace"], spec.get("suffix"), meta["name"])


def checkpoint_object(job: str, model: str, step: int, created_at: int,
                      metrics: Mapping[str, Any]) -> FineTuningJobCheckpoint:
    """One complete checkpoint with the metrics the trainer recorded for its step."""
    return FineTuningJobCheckpoint(
        id=f"ftckpt-{_short_id(job)}-{step}",
        created_at=created_at,
        fine_tuned_model_checkpoint=f"{model}:ckpt-step-{step}",
        fine_tuning_job_id=job,
        step_number=step,
        metrics={"step": step, **{key: metrics[key] for key in CHECKPOINT_METRICS if metrics.get(key) is not None}},
    )
