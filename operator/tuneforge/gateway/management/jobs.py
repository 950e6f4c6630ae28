"""Jobs of the management API: list, create, get, delete, stop, restart, deploy, stats.

Every handler reads or writes FineTuningJob resources only (and, for deploy, a
ModelDeployment), like the OpenAI routes: creating a job goes through the same
`create_job_once` as POST /v1/fine_tuning/jobs, stop and restart are the declarative
spec.suspend and spec.restartCount the controller acts on.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from starlette.concurrency import run_in_threadpool

from tuneforge.api.v1alpha1 import API_VERSION, ModelDeploymentResource, ModelDeploymentSpec
from tuneforge.api.v1alpha1.common import MAX_NODES
from tuneforge.api.v1alpha1.finetuningjob import JOB_NAME_PREFIX
from tuneforge.api.v1alpha1.labels import Label
from tuneforge.config import settings
from tuneforge.contracts import BASE_LEARNING_RATE
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.catalog import is_live_model
from tuneforge.gateway.errors import OpenAIError, not_found
from tuneforge.gateway.fine_tuning import (
    JobDraft,
    create_job_once,
)
from tuneforge.gateway.kube import AlreadyExists
from tuneforge.gateway.management.shapes import (
    DEFAULT_SORT,
    ListQuery,
    job_detail,
    job_status,
    job_summary,
    learning_rate_multiplier,
    parse_sort,
    parse_statuses,
    select_jobs,
    stats,
)
from tuneforge.jobfiles import JobFiles

router = APIRouter()

PLURAL = "finetuningjobs"
MAX_LIMIT = 100
PARAMS = {"model": "baseModel", "training_file": "trainingDataset", "validation_file": "validationFile",
          "suffix": "suffix", "hardware.profile": "hardware.profile", "hardware.gpu_count": "hardware.gpuCount",
          "hardware.nodes": "hardware.nodes", "distributed.strategy": "distributed.strategy",
          "distributed.processes_per_node": "distributed.processesPerNode"}


class CamelBody(BaseModel):
    """camelCase on the wire; unknown fields are refused, so a misspelt option is a 400
    instead of a silently ignored setting."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=False, extra="forbid")


class JobHyperparameters(CamelBody):
    epochs: int | None = Field(default=None, ge=1, le=50)
    """Passes over the training data; the trainer picks when omitted."""
    learning_rate: float | None = Field(default=None, gt=0, le=100 * BASE_LEARNING_RATE)
    """Absolute peak learning rate; stored as a multiplier of the LoRA base rate 2e-4."""
    batch_size: int | None = Field(default=None, ge=1, le=256)
    """Examples per optimizer step; the trainer picks when omitted."""
    warmup_steps: int | None = Field(default=None, ge=0, le=1_000_000)
    """Learning-rate warmup steps (capped at the run's steps); 3% of the steps when omitted."""


class JobHardware(CamelBody):
    profile: str | None = Field(default=None, min_length=1, max_length=63)
    """A profile from GET /hardware; defaults to the base model's, else the platform's."""
    gpu_count: int | None = Field(default=None, ge=0, le=64)
    """GPUs per Pod, overriding the profile's."""
    nodes: int | None = Field(default=None, ge=1, le=MAX_NODES)
    """Pods that train together; more than 1 needs a profile whose maxNodes allows it."""


class JobDistributed(CamelBody):
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """auto, ddp or fsdp (docs/trainer.md, sizing a job)."""
    processes_per_node: int | None = Field(default=None, ge=1, le=64)
    """Training processes per Pod; defaults to its GPU count (1 on CPU)."""


class JobCreate(CamelBody):
    name: str = Field(min_length=1, max_length=200)
    base_model: str = Field(min_length=1, max_length=253)
    training_dataset: str = Field(min_length=1, max_length=100)
    """A file id (purpose fine-tune) uploaded with POST /v1/files."""
    description: str | None = Field(default=None, max_length=2000)
    validation_file: str | None = Field(default=None, max_length=100)
    hyperparameters: JobHyperparameters | None = None
    suffix: str | None = Field(default=None, max_length=40)
    hardware: JobHardware | None = None
    distributed: JobDistributed | None = None


class DeployRequest(CamelBody):
    dedicated: bool = False
    """Create a dedicated ModelDeployment even when the base model's shared one exists."""
    replicas: int = Field(default=1, ge=0, le=64)
    """Replicas of a dedicated deployment."""


# -- helpers -------------------------------------------------------------------------------


async def load_job(request: Request, principal: Principal, job_id: str) -> dict:
    """The caller's job; another tenant's id, an unknown one and a job being deleted are all
    404, so ids never leak."""
    resource = await request.app.state.kube.get(PLURAL, principal.tenant, job_id) if job_id.startswith(JOB_NAME_PREFIX) else None
    if resource is None or resource["metadata"].get("deletionTimestamp"):
        raise not_found("fine-tuning job", job_id, param="id")
    return resource


async def live_jobs(request: Request, principal: Principal) -> list[dict]:
    resources = await request.app.state.kube.list(PLURAL, principal.tenant)
    return [r for r in resources if not r["metadata"].get("deletionTimestamp")]


def conflict(message: str, code: str = "invalid_job_state") -> OpenAIError:
    return OpenAIError(409, message, param="id", code=code)


def _draft(body: JobCreate) -> JobDraft:
    hp = body.hyperparameters or JobHyperparameters()
    hyperparameters = {
        key: value for key, value in (
            ("n_epochs", hp.epochs),
            ("batch_size", hp.batch_size),
            ("learning_rate_multiplier", learning_rate_multiplier(hp.learning_rate) if hp.learning_rate else None),
            ("warmup_steps", hp.warmup_steps),
        ) if value is not None
    }
    return JobDraft(model=body.base_model, training_file=body.training_dataset, validation_file=body.validation_file,
                    suffix=body.suffix, hyperparameters=hyperparameters, display_name=body.name,
                    description=body.description, params=PARAMS,
                    hardware=body.hardware.model_dump(exclude_none=True) if body.hardware else None,
                    distributed=body.distributed.model_dump(exclude_none=True) if body.distributed else {})


# -- routes --------------------------------------------------------------------------------


@router.get("/jobs", summary="List fine-tuning jobs with filters, search, sort and offset pagination")
async def list_jobs(
    request: Request,
    principal: Principal = Depends(require("fine-tuning:read")),
    status: Annotated[str | None, Query(description="queued, running, completed, failed or stopped; "
                                                    "several comma-separated")] = None,
    base_model: Annotated[str | None, Query(alias="baseModel")] = None,
    search: Annotated[str | None, Query(max_length=200, description="Substring of name or description")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    sort: Annotated[str, Query(description="createdAt, updatedAt, name or status, with :asc or :desc")] = DEFAULT_SORT,
) -> dict:
    field, descending = parse_sort(sort)
    query = ListQuery(statuses=parse_statuses(status) if status is not None else None, base_model=base_model,
                      search=search or None, sort_field=field, descending=descending, limit=limit, offset=offset)
    count, selected = select_jobs(await live_jobs(request, principal), query)
    return {"count": count, "limit": limit, "offset": offset, "jobs": [job_summary(r) for r in selected]}


@router.post("/jobs", status_code=201, summary="Create a fine-tuning job")
async def create_job(
    body: JobCreate,
    request: Request,
    principal: Principal = Depends(require("fine-tuning:write")),
    idempotency_key: str | None = Header(default=None),
) -> dict:
    return job_detail(await create_job_once(request, principal, _draft(body), idempotency_key=idempotency_key,
                                            request_body=body.model_dump(by_alias=True)))


@router.get("/jobs/{job_id}", summary="Get a fine-tuning job")
async def get_job(job_id: str, request: Request, principal: Principal = Depends(require("fine-tuning:read"))) -> dict:
    return job_detail(await load_job(request, principal, job_id))


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response,
               summary="Delete a job that is not queued or running, with its artifacts")
async def delete_job(job_id: str, request: Request,
                     principal: Principal = Depends(require("fine-tuning:write"))) -> Response:
    resource = await load_job(request, principal, job_id)
    status = job_status(resource)
    if status in ("queued", "running"):
        raise conflict(f"Job '{job_id}' is {status}; stop it first (POST /api/v1/fine-tuning/jobs/{job_id}/stop), "
                       "then delete it.", code="job_active")
    await request.app.state.kube.delete(PLURAL, principal.tenant, job_id)
    store = request.app.state.store
    await run_in_threadpool(store.delete, JobFiles.of(store, principal.tenant, job_id).path())
    return Response(status_code=204)


@router.post("/jobs/{job_id}/stop", summary="Stop a job after its last checkpoint (restart resumes it)")
async def stop_job(job_id: str, request: Request, principal: Principal = Depends(require("fine-tuning:write"))) -> dict:
    resource = await load_job(request, principal, job_id)
    status = job_status(resource)
    if status == "stopped":
        return job_detail(resource)
    if status in ("completed", "failed"):
        raise conflict(f"Job '{job_id}' is {status}; only queued or running jobs can be stopped.")
    patched = await request.app.state.kube.patch(PLURAL, principal.tenant, job_id, {"spec": {"suspend": True}})
    return job_detail(patched)


@router.post("/jobs/{job_id}/restart", summary="Restart a stopped or failed job from its latest checkpoint")
async def restart_job(job_id: str, request: Request,
                      principal: Principal = Depends(require("fine-tuning:write"))) -> dict:
    resource = await load_job(request, principal, job_id)
    spec, phase = resource["spec"], (resource.get("status") or {}).get("phase")
    status = job_status(resource)
    if spec.get("cancel") or phase == "Cancelled":
        raise conflict(f"Job '{job_id}' was cancelled, which is final; create a new job instead.")
    if status == "stopped":
        patch: dict = {"spec": {"suspend": False}}
    elif status == "failed":
        # The resourceVersion makes two concurrent restarts one restart (the second gets 409).
        patch = {"metadata": {"resourceVersion": resource["metadata"]["resourceVersion"]},
                 "spec": {"restartCount": int(spec.get("restartCount") or 0) + 1}}
    else:
        raise conflict(f"Job '{job_id}' is {status}; only stopped or failed jobs can be restarted.")
    patched = await request.app.state.kube.patch(PLURAL, principal.tenant, job_id, patch)
    store = request.app.state.store
    steps = await run_in_threadpool(JobFiles.of(store, principal.tenant, job_id).complete_checkpoints)
    return {**job_detail(patched), "resumeFromStep": steps[-1] if steps else None}


@router.post("/jobs/{job_id}/deploy", summary="Serve a completed job's fine-tuned model")
async def deploy_job(
    job_id: str,
    request: Request,
    principal: Principal = Depends(require("fine-tuning:write")),
    body: Annotated[DeployRequest | None, Body()] = None,
) -> dict:
    body = body or DeployRequest()
    kube = request.app.state.kube
    resource = await load_job(request, principal, job_id)
    status = job_status(resource)
    if status != "completed":
        raise conflict(f"Job '{job_id}' is {status}; only completed jobs can be deployed.")
    if not is_live_model(resource):
        raise conflict(f"The fine-tuned model of job '{job_id}' was deleted.", code="model_deleted")
    model, base = resource["status"]["fineTunedModel"], resource["spec"]["baseModel"]
    if not body.dedicated:
        shared = await kube.list("modeldeployments", settings().system_namespace,
                                 label_selector=f"{Label.BASE_MODEL}={base},{Label.SHARED}=true")
        if shared:
            return _deployed(job_id, model, shared[0], shared=True)
    deployment = ModelDeploymentResource(
        metadata={
            "name": job_id,
            "namespace": principal.tenant,
            "labels": {Label.FINE_TUNING_JOB: job_id},
            # Owned by the job: deleting the job (and with it the model) removes its deployment.
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "FineTuningJob", "name": job_id,
                                 "uid": resource["metadata"]["uid"], "blockOwnerDeletion": False}],
        },
        spec=ModelDeploymentSpec(base_model=base, adapters=[{"name": model, "source": job_id}],
                                 replicas=body.replicas),
    ).to_wire()
    try:
        created = await kube.create("modeldeployments", principal.tenant, deployment)
    except AlreadyExists:
        created = await kube.get("modeldeployments", principal.tenant, job_id)
    return _deployed(job_id, model, created, shared=False)


def _deployed(job_id: str, model: str, deployment: dict, *, shared: bool) -> dict:
    return {
        "id": job_id,
        "resultModel": model,
        "status": "deployed",
        "loadedOnDemand": shared,
        "deployment": {
            "name": deployment["metadata"]["name"],
            "namespace": deployment["metadata"]["namespace"],
            "shared": shared,
            "phase": (deployment.get("status") or {}).get("phase") or "Pending",
        },
    }


@router.get("/stats", summary="Job counts by status in the caller's namespace")
async def job_stats(request: Request, principal: Principal = Depends(require("fine-tuning:read"))) -> dict:
    return stats(await live_jobs(request, principal))
