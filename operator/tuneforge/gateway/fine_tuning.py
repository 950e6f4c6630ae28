"""/v1/fine_tuning/jobs: the OpenAI fine-tuning API over FineTuningJob resources.

The resource name is the job id. The gateway writes only spec (desired state: cancel and
suspend included) and reads status written by the controller, plus the trainer's reports
(events, metrics, complete checkpoints) from the artifact store through `tuneforge.jobfiles`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Header, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from tuneforge.api.sizing import SizingError, size_training
from tuneforge.api.v1alpha1 import BaseModelSpec, FineTuningJobResource, FineTuningJobSpec, finetuningjob
from tuneforge.api.v1alpha1.finetuningjob import restart_pending
from tuneforge.api.v1alpha1.labels import Annotation
from tuneforge.config import settings
from tuneforge.gateway import catalog
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.errors import bad_request, not_found
from tuneforge.gateway.files import file_meta, validation_error
from tuneforge.gateway.ids import create_once
from tuneforge.gateway.openai_types import FineTuningJobCreate, Hyperparameters, Limit, page, unix
from tuneforge.jobfiles import JobFiles
from tuneforge.storage import ArtifactStore

router = APIRouter(tags=["fine-tuning"])

PLURAL = "finetuningjobs"
SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_STATUS = finetuningjob.OPENAI_STATUS


def _status(resource: dict) -> str:
    """The OpenAI status: the controller's phase, with spec.cancel / spec.suspend and a
    restart request shown at once (the controller acts on them within a poll interval)."""
    spec, status = resource["spec"], resource.get("status") or {}
    phase = status.get("phase")
    if phase in finetuningjob.TERMINAL_PHASES and not restart_pending(spec, status):
        return _STATUS[phase]
    if spec.get("cancel"):
        return "cancelled"
    if spec.get("suspend"):
        return "paused"
    if phase in ("Paused", "Failed"):
        return "queued"
    return _STATUS.get(phase, "validating_files")



def job_object(resource: dict) -> dict:
    """A complete `fine_tuning.job` object."""
    meta, spec, status = resource["metadata"], resource["spec"], resource.get("status") or {}
    wanted = spec.get("hyperparameters") or {}
    resolved = status.get("hyperparameters") or {}
    hyperparameters = {
        "n_epochs": resolved.get("nEpochs") or wanted.get("nEpochs", "auto"),
        "batch_size": resolved.get("batchSize") or wanted.get("batchSize", "auto"),
        "learning_rate_multiplier": resolved.get("learningRateMultiplier") or wanted.get("learningRateMultiplier", "auto"),
    }
    error = status.get("error")
    progress = status.get("progress") or {}
    return {
        "object": "fine_tuning.job",
        "id": meta["name"],
        "created_at": unix(meta["creationTimestamp"]),
        "model": spec["baseModel"],
        "organization_id": meta["namespace"],
        "status": _status(resource),
        "fine_tuned_model": status.get("fineTunedModel"),
        "finished_at": unix(status.get("finishedAt")),
        "error": {"code": error["code"], "message": error["message"], "param": error.get("param")} if error else None,
        "hyperparameters": hyperparameters,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "result_files": status.get("resultFiles") or [],
        "seed": wanted.get("seed", 42),
        "trained_tokens": status.get("trainedTokens"),
        "training_file": spec["trainingFile"],
        "validation_file": spec.get("validationFile"),
        "estimated_finish": unix(progress.get("estimatedFinish")),
        "integrations": None,
        "metadata": spec.get("metadata"),
        "user_provided_suffix": spec.get("suffix"),
    }


def _check_file(store: ArtifactStore, namespace: str, file_id: str, param: str) -> None:
    """A training or validation file must be an upload of this tenant, purpose fine-tune,
    that passed validation; URIs are refused here (they would let a tenant point a job at
    any path the trainer can read)."""
    meta = file_meta(store, namespace, file_id)
    if meta is None:
        raise bad_request(f"File '{file_id}' does not exist.", param=param, code="invalid_file")
    if meta["purpose"] != "fine-tune":
        raise bad_request(f"File '{file_id}' has purpose '{meta['purpose']}', not 'fine-tune'.", param=param,
                          code="invalid_file_purpose")
    if meta["status"] != "processed":
        error = validation_error(store, namespace, file_id) or {}
        raise bad_request(f"File '{file_id}' is not a valid fine-tuning file: {meta.get('status_details')}",
                          param=param, code=error.get("code", "invalid_file"))


def _hyperparameters(body: FineTuningJobCreate) -> Hyperparameters:
    method = body.method.supervised.hyperparameters if body.method and body.method.supervised else None
    if method is not None and body.hyperparameters is not None and method != body.hyperparameters:
        raise bad_request("Give hyperparameters either at the top level or in method.supervised, not both.",
                          param="hyperparameters", code="conflicting_parameters")
    return method or body.hyperparameters or Hyperparameters()


OPENAI_PARAMS: Mapping[str, str] = {
    "model": "model", "training_file": "training_file", "validation_file": "validation_file", "suffix": "suffix",
}
"""The caller's name of each field a create check can name; the sizing checks' params
(hardware.nodes, distributed.processes_per_node, ...) are already spelt as here."""


@dataclass(frozen=True)
class JobDraft:
    """A job as either API asks for it, in FineTuningJob terms, so both APIs create the very
    same resource. `params` spells each field the way the calling API does, so errors name
    the caller's own fields."""

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    hyperparameters: Mapping[str, object] = field(default_factory=dict)
    """FineTuningJobSpec.hyperparameters fields (Python names)."""
    metadata: Mapping[str, str] | None = None
    display_name: str | None = None
    description: str | None = None
    hardware: Mapping[str, object] | None = None
    """FineTuningJobSpec.hardware fields (Python names); tenants may pick a profile, the GPU
    count and the nodes, never placement (node selectors, tolerations)."""
    distributed: Mapping[str, object] = field(default_factory=dict)
    """FineTuningJobSpec.distributed fields (Python names)."""
    params: Mapping[str, str] = field(default_factory=lambda: OPENAI_PARAMS)


async def create_job_once(request: Request, principal: Principal, draft: JobDraft, *, idempotency_key: str | None,
                          request_body: dict) -> dict:
    """Creates the FineTuningJob for `draft` once per idempotency key (both APIs' create)."""

    async def build(name: str) -> dict:
        return await _build_job(request, principal, draft, name)

    return await create_once(request.app.state.kube, PLURAL, principal.tenant, prefix="ftjob",
                             idempotency_key=idempotency_key, request_body=request_body, build=build)


async def _build_job(request: Request, principal: Principal, draft: JobDraft, name: str) -> dict:
    """The FineTuningJob resource for `draft`, after the checks the API server cannot do:
    the model is a fine-tunable catalog entry and the files are this tenant's valid
    fine-tuning uploads."""
    params = draft.params
    kube = request.app.state.kube
    base = await catalog.catalog_model(kube, draft.model)
    if base is None:
        raise bad_request(f"Model '{draft.model}' is not in the catalog.", param=params["model"],
                          code="model_not_available")
    if not base["spec"].get("fineTunable", True):
        raise bad_request(f"Model '{draft.model}' cannot be fine-tuned.", param=params["model"],
                          code="model_not_available")
    if draft.suffix is not None and not SUFFIX.match(draft.suffix):
        raise bad_request("suffix must be lowercase letters, digits and dashes, starting with a letter or digit.",
                          param=params["suffix"], code="invalid_suffix")
    store = request.app.state.store
    await run_in_threadpool(_check_file, store, principal.tenant, draft.training_file, params["training_file"])
    if draft.validation_file:
        await run_in_threadpool(_check_file, store, principal.tenant, draft.validation_file, params["validation_file"])
    try:
        spec = FineTuningJobSpec(
            base_model=draft.model,
            training_file=draft.training_file,
            validation_file=draft.validation_file,
            suffix=draft.suffix,
            metadata=dict(draft.metadata) if draft.metadata is not None else None,
            display_name=draft.display_name,
            description=draft.description,
            hyperparameters=dict(draft.hyperparameters),
            hardware=dict(draft.hardware) if draft.hardware else None,
            distributed=dict(draft.distributed),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise bad_request(f"{first['msg']}", param=".".join(map(str, first["loc"])), code="invalid_value") from exc
    _check_size(spec, base, params)
    annotations = {Annotation.CREATED_BY: principal.key_name} if principal.key_name else {}
    return FineTuningJobResource(
        metadata={"name": name, "namespace": principal.tenant, "annotations": annotations}, spec=spec
    ).to_wire()


def _check_size(spec: FineTuningJobSpec, base: dict, params: Mapping[str, str]) -> None:
    """The hardware checks the controller would fail the job with (tuneforge.api.sizing),
    made before the job exists: GPUs, nodes and processes no profile offers, fsdp with
    QLoRA, an unknown profile."""
    try:
        size_training(spec, BaseModelSpec.model_validate(base["spec"]), settings())
    except SizingError as exc:
        raise bad_request(exc.message, param=params.get(exc.param, exc.param), code=exc.code) from exc


def _draft(body: FineTuningJobCreate) -> JobDraft:
    hyper = _hyperparameters(body)
    nickname = body.suffix is None and body.nickname is not None
    return JobDraft(
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        suffix=body.nickname if nickname else body.suffix,
        metadata=body.metadata,
        hyperparameters={
            "n_epochs": hyper.n_epochs,
            "batch_size": hyper.batch_size,
            "learning_rate_multiplier": hyper.learning_rate_multiplier,
            **({"seed": body.seed} if body.seed is not None else {}),
        },
        hardware=body.hardware.model_dump(exclude_none=True) if body.hardware else None,
        distributed=body.distributed.model_dump(exclude_none=True) if body.distributed else {},
        params={**OPENAI_PARAMS, "suffix": "nickname"} if nickname else OPENAI_PARAMS,
    )


@router.post("/fine_tuning/jobs", summary="Create a fine-tuning job")
async def create_job(
    body: FineTuningJobCreate,
    request: Request,
    principal: Principal = Depends(require("fine-tuning:write")),
    idempotency_key: str | None = Header(default=None),
) -> dict:
    return job_object(await create_job_once(request, principal, _draft(body), idempotency_key=idempotency_key,
                                            request_body=body.model_dump()))


async def _job(request: Request, principal: Principal, job_id: str) -> dict:
    resource = await request.app.state.kube.get(PLURAL, principal.tenant, job_id) if job_id.startswith(finetuningjob.JOB_NAME_PREFIX) else None
    if resource is None:
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")
    return resource


def _metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters, as the OpenAI API takes them."""
    filters = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("metadata[") and key.endswith("]"):
            filters[key[len("metadata[") : -1]] = value
    return filters


def newest_first(resources: list[dict]) -> list[dict]:
    return sorted(resources, key=lambda r: (r["metadata"]["creationTimestamp"], r["metadata"]["name"]), reverse=True)


@router.get("/fine_tuning/jobs", summary="List fine-tuning jobs")
async def list_jobs(
    request: Request,
    principal: Principal = Depends(require("fine-tuning:read")),
    after: str | None = None,
    limit: Limit = 20,
) -> dict:
    filters = _metadata_filter(request)
    jobs = newest_first(await request.app.state.kube.list(PLURAL, principal.tenant))
    if filters:
        jobs = [job for job in jobs if all((job["spec"].get("metadata") or {}).get(k) == v for k, v in filters.items())]
    return page([job_object(job) for job in jobs], after=after, limit=limit)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}", summary="Retrieve a fine-tuning job")
async def retrieve_job(fine_tuning_job_id: str, request: Request,
                       principal: Principal = Depends(require("fine-tuning:read"))) -> dict:
    return job_object(await _job(request, principal, fine_tuning_job_id))


async def _set(request: Request, principal: Principal, job_id: str, field: str, value: bool, allowed) -> dict:
    resource = await _job(request, principal, job_id)
    reason = allowed(resource)
    if reason:
        raise bad_request(reason, param="fine_tuning_job_id", code="invalid_job_state")
    patched = await request.app.state.kube.patch(PLURAL, principal.tenant, job_id, {"spec": {field: value}})
    return job_object(patched)


def _finished(resource: dict) -> str | None:
    status = _status(resource)
    if status in ("succeeded", "failed", "cancelled"):
        return f"The job has already {'been cancelled' if status == 'cancelled' else status}."
    return None


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", summary="Cancel a fine-tuning job")
async def cancel_job(fine_tuning_job_id: str, request: Request,
                     principal: Principal = Depends(require("fine-tuning:write"))) -> dict:
    return await _set(request, principal, fine_tuning_job_id, "cancel", True, _finished)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/pause", summary="Pause a fine-tuning job")
async def pause_job(fine_tuning_job_id: str, request: Request,
                    principal: Principal = Depends(require("fine-tuning:write"))) -> dict:
    return await _set(request, principal, fine_tuning_job_id, "suspend", True, _finished)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/resume", summary="Resume a paused fine-tuning job")
async def resume_job(fine_tuning_job_id: str, request: Request,
                     principal: Principal = Depends(require("fine-tuning:write"))) -> dict:
    def not_paused(resource: dict) -> str | None:
        return None if _status(resource) == "paused" else "Only a paused job can be resumed."

    return await _set(request, principal, fine_tuning_job_id, "suspend", False, not_paused)


def read_events(store: ArtifactStore, namespace: str, job: str) -> list[dict]:
    """The trainer's events as `fine_tuning.job.event` objects, newest first."""
    events = []
    for number, record in enumerate(JobFiles.of(store, namespace, job).events(), start=1):
        events.append({
            "object": "fine_tuning.job.event",
            "id": record.get("id") or f"ftevent-{job.removeprefix(finetuningjob.JOB_NAME_PREFIX)}-{number}",
            "created_at": int(record.get("created_at") or 0),
            "level": record.get("level", "info"),
            "message": record.get("message", ""),
            "type": record.get("type", "message"),
            "data": record.get("data") or {},
        })
    events.reverse()
    return events


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events", summary="List a job's events, newest first")
async def list_events(fine_tuning_job_id: str, request: Request,
                      principal: Principal = Depends(require("fine-tuning:read")),
                      after: str | None = None, limit: Limit = 20) -> dict:
    await _job(request, principal, fine_tuning_job_id)
    events = await run_in_threadpool(read_events, request.app.state.store, principal.tenant, fine_tuning_job_id)
    return page(events, after=after, limit=limit)


def _checkpoints(store: ArtifactStore, resource: dict) -> list[dict]:
    """The complete checkpoints, newest first, with the metrics of their steps."""
    namespace, job = resource["metadata"]["namespace"], resource["metadata"]["name"]
    files = JobFiles.of(store, namespace, job)
    steps = files.complete_checkpoints()
    if not steps:
        return []
    metrics = files.metrics_by_step()
    model = (resource.get("status") or {}).get("fineTunedModel") or finetuningjob.fine_tuned_model_id(
        resource["spec"]["baseModel"], namespace, resource["spec"].get("suffix"), job)
    result = []
    for step in reversed(steps):
        record = metrics.get(step, {})
        result.append({
            "object": "fine_tuning.job.checkpoint",
            "id": f"ftckpt-{job.removeprefix(finetuningjob.JOB_NAME_PREFIX)}-{step}",
            "created_at": files.checkpoint_created_at(step),
            "fine_tuned_model_checkpoint": f"{model}:ckpt-step-{step}",
            "fine_tuning_job_id": job,
            "step_number": step,
            "metrics": {
                "step": step,
                **{key: record.get(key) for key in (
                    "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                    "full_valid_loss", "full_valid_mean_token_accuracy") if record.get(key) is not None},
            },
        })
    return result


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", summary="List a job's checkpoints, newest first")
async def list_checkpoints(fine_tuning_job_id: str, request: Request,
                           principal: Principal = Depends(require("fine-tuning:read")),
                           after: str | None = None, limit: Limit = 10) -> dict:
    resource = await _job(request, principal, fine_tuning_job_id)
    checkpoints = await run_in_threadpool(_checkpoints, request.app.state.store, resource)
    return page(checkpoints, after=after, limit=limit)


