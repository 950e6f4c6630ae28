"""FineTuningJobs (and the deployment of their model) as the management API shows them.
Pure, so every field's source (spec, status, the resolved hyperparameters) is tested on
plain dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneforge.api.v1alpha1.labels import Annotation
from tuneforge.gateway.management.job_status import job_status
from tuneforge.gateway.management.learning_rate import learning_rate
from tuneforge.gateway.management.protocol import (
    CreatedJob,
    DeployedJob,
    DeploymentRef,
    JobDetail,
    JobError,
    JobHyperparametersView,
    JobMetricsSummary,
    JobProgress,
    JobSummary,
    RestartedJob,
    StoppedJob,
)


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


def hyperparameters(resource: Mapping[str, Any]) -> JobHyperparametersView:
    """What the job trains with: the trainer's resolved values once it reported them, else
    the requested ones; "auto" where the trainer still has to choose."""
    wanted = resource["spec"].get("hyperparameters") or {}
    resolved = (resource.get("status") or {}).get("hyperparameters") or {}
    multiplier = resolved.get("learningRateMultiplier") or wanted.get("learningRateMultiplier", "auto")
    return JobHyperparametersView(
        epochs=resolved.get("nEpochs") or wanted.get("nEpochs", "auto"),
        learning_rate="auto" if multiplier == "auto" else learning_rate(multiplier),
        batch_size=resolved.get("batchSize") or wanted.get("batchSize", "auto"),
        warmup_steps=wanted.get("warmupSteps"),
        warmup_ratio=None if wanted.get("warmupSteps") is not None else wanted.get("warmupRatio", 0.03),
    )


def _summary_fields(resource: Mapping[str, Any], base_model_id: str | None) -> dict[str, Any]:
    """`base_model_id`: the base's model id (`ModelCatalog.model_id` of spec.baseModel)."""
    meta, spec, status = resource["metadata"], resource["spec"], resource.get("status") or {}
    progress = status.get("progress") or {}
    return {
        "id": meta["name"],
        "name": job_name(resource),
        "base_model": base_model_id or spec["baseModel"],
        "status": job_status(resource),
        "description": spec.get("description"),
        "owner": (meta.get("annotations") or {}).get(Annotation.CREATED_BY),
        "organization_id": meta["namespace"],
        "trained_tokens": status.get("trainedTokens"),
        "started_at": status.get("startedAt"),
        "finished_at": status.get("finishedAt"),
        "created_at": meta["creationTimestamp"],
        "updated_at": updated_at(resource),
        "progress": JobProgress(step=progress.get("step"), total_steps=progress.get("totalSteps")),
    }


def job_summary(resource: Mapping[str, Any], *, base_model_id: str | None = None) -> JobSummary:
    return JobSummary(**_summary_fields(resource, base_model_id))


def _detail_fields(resource: Mapping[str, Any], file_names: Mapping[str, str],
                   base_model_id: str | None) -> dict[str, Any]:
    """`file_names`: upload names by file id, for the job's training and validation files."""
    spec, status = resource["spec"], resource.get("status") or {}
    error = status.get("error")
    progress = status.get("progress") or {}
    metrics = status.get("metrics") or {}
    return {
        **_summary_fields(resource, base_model_id),
        "training_dataset": spec["trainingFile"],
        "training_file": file_names.get(spec["trainingFile"]),
        "validation_file": file_names.get(spec.get("validationFile") or "", spec.get("validationFile")),
        "validation_dataset": spec.get("validationFile"),
        "suffix": spec.get("suffix"),
        "hyperparameters": hyperparameters(resource),
        "result_model": status.get("fineTunedModel"),
        "error": JobError.model_validate(error) if error else None,
        "metrics": JobMetricsSummary(training_loss=metrics.get("trainLoss"), validation_loss=metrics.get("validLoss"),
                                     epoch=progress.get("epoch")),
        "restarts": status.get("restarts") or 0,
        "estimated_finish": progress.get("estimatedFinish"),
    }


def job_detail(resource: Mapping[str, Any], file_names: Mapping[str, str], *,
               base_model_id: str | None = None) -> JobDetail:
    """The full job: the summary plus what was asked for and what came out."""
    return JobDetail(**_detail_fields(resource, file_names, base_model_id))


def created_job(resource: Mapping[str, Any], file_names: Mapping[str, str], webhook_secret: str | None, *,
                base_model_id: str | None = None) -> CreatedJob:
    return CreatedJob(**_detail_fields(resource, file_names, base_model_id), webhook_secret=webhook_secret)


def stopped_job(resource: Mapping[str, Any], file_names: Mapping[str, str], *,
                base_model_id: str | None = None) -> StoppedJob:
    return StoppedJob(**_detail_fields(resource, file_names, base_model_id),
                      message="Fine-tuning job stopped successfully")


def restarted_job(resource: Mapping[str, Any], file_names: Mapping[str, str], resume_from_step: int | None, *,
                  base_model_id: str | None = None) -> RestartedJob:
    return RestartedJob(**_detail_fields(resource, file_names, base_model_id), resume_from_step=resume_from_step,
                        message="Fine-tuning job restarted successfully")


def deployed_job(job_id: str, model: str, deployment: Mapping[str, Any], *, shared: bool) -> DeployedJob:
    """Where a job's model is served: the shared deployment of its base model, which loads
    the adapter on the first request, or the job's own."""
    return DeployedJob(
        id=job_id,
        result_model=model,
        message="Fine-tuned model deployed successfully",
        loaded_on_demand=shared,
        deployment=DeploymentRef(
            name=deployment["metadata"]["name"],
            namespace=deployment["metadata"]["namespace"],
            shared=shared,
            phase=(deployment.get("status") or {}).get("phase") or "Pending",
        ),
    )
