"""Jobs of the management API: list, create, get, delete, stop, restart, deploy, stats,
and the download of a completed job's adapter or merged model.

Every handler reads or writes FineTuningJob resources only (and, for deploy, a
ModelDeployment), like the OpenAI routes: creating a job goes through the same
`fine_tuning_service.create_job_once` as POST /v1/fine_tuning/jobs, stop and restart are
the declarative spec.suspend and spec.restartCount the controller acts on.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.api.v1alpha1 import API_VERSION, ModelDeploymentResource, ModelDeploymentSpec
from tuneforge.api.v1alpha1.labels import Label
from tuneforge.config import settings
from tuneforge.gateway import exports
from tuneforge.gateway import fine_tuning_service as service
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.catalog import is_live_model
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.files import file_meta
from tuneforge.gateway.kube import AlreadyExists
from tuneforge.gateway.management.job_queries import (
    DEFAULT_SORT,
    ListQuery,
    parse_sort,
    parse_statuses,
    select_jobs,
    stats,
)
from tuneforge.gateway.management.job_status import job_status
from tuneforge.gateway.management.job_views import (
    created_job,
    deployed_job,
    job_detail,
    job_summary,
    restarted_job,
    stopped_job,
)
from tuneforge.gateway.management.learning_rate import learning_rate_multiplier
from tuneforge.gateway.management.protocol import (
    CreatedJob,
    DeployedJob,
    DeployRequest,
    JobCreate,
    JobDetail,
    JobHyperparameters,
    JobList,
    JobStats,
    RestartedJob,
    StoppedJob,
)
from tuneforge.jobfiles import JobFiles

router = APIRouter()

RESTART_RETRY_SECONDS = 5.0
"""How long a restart keeps deciding again while other writers (the operator) win the race."""
RESTART_JITTER_SECONDS = 0.01

MAX_LIMIT = 100
PARAMS = {"model": "baseModel", "training_file": "trainingDataset", "validation_file": "validationFile",
          "suffix": "suffix", "webhook_url": "webhookUrl", "hardware.profile": "hardware.profile", "hardware.gpu_count": "hardware.gpuCount",
          "hardware.nodes": "hardware.nodes", "distributed.strategy": "distributed.strategy",
          "distributed.processes_per_node": "distributed.processesPerNode"}
"""The management API's name of each field a create check can name."""


def conflict(message: str, code: str = "invalid_job_state") -> OpenAIError:
    return OpenAIError(409, message, param="id", code=code)


async def _file_names(request: Request, principal: Principal, resource: dict) -> dict[str, str]:
    """The upload names of the job's training and validation files, by id."""
    spec, store = resource["spec"], request.app.state.store
    names = {}
    for file_id in filter(None, (spec["trainingFile"], spec.get("validationFile"))):
        meta = await run_in_threadpool(file_meta, store, principal.tenant, file_id)
        if meta is not None:
            names[file_id] = meta.filename
    return names


async def _draft(request: Request, principal: Principal, body: JobCreate) -> service.JobDraft:
    """The job the body asks for, with its files named by id or upload name resolved to ids."""
    store = request.app.state.store
    training = await service.resolve_file_reference(store, principal.tenant, body.training_dataset, "trainingDataset")
    validation = None if body.validation_file is None else await service.resolve_file_reference(
        store, principal.tenant, body.validation_file, "validationFile")
    hp = body.hyperparameters or JobHyperparameters()
    hyperparameters = {
        key: value for key, value in (
            ("n_epochs", hp.epochs),
            ("batch_size", hp.batch_size),
            ("learning_rate_multiplier", learning_rate_multiplier(hp.learning_rate) if hp.learning_rate else None),
            ("warmup_steps", hp.warmup_steps),
        ) if value is not None
    }
    return service.JobDraft(
        model=body.base_model, training_file=training, validation_file=validation,
        suffix=body.suffix, hyperparameters=hyperparameters, display_name=body.name, description=body.description,
        params=PARAMS, hardware=body.hardware.model_dump(exclude_none=True) if body.hardware else None,
        distributed=body.distributed.model_dump(exclude_none=True) if body.distributed else {},
        webhook_url=body.webhook_url)


async def _base_model_id(request: Request, resource: dict) -> str:
    """The model id of the job's base model, which the views show (spec.baseModel holds its
    resource name)."""
    base = resource["spec"]["baseModel"]
    return (await request.app.state.catalog.current([base])).model_id(base)


async def _job(request: Request, principal: Principal, job_id: str) -> dict:
    return await service.find_live_job(request.app.state.kube, principal.tenant, job_id, param="id")


@router.get("/jobs", response_model=JobList,
            summary="List fine-tuning jobs with filters, search, sort and offset pagination")
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
) -> JobList:
    field, descending = parse_sort(sort)
    catalog = request.app.state.catalog
    if base_model is not None and (entry := await catalog.resolve(base_model)) is not None:
        base_model = entry["metadata"]["name"]
    query = ListQuery(statuses=parse_statuses(status) if status is not None else None, base_model=base_model,
                      search=search or None, sort_field=field, descending=descending, limit=limit, offset=offset)
    count, selected = select_jobs(await service.list_live_jobs(request.app.state.listing, principal.tenant), query)
    ids = await catalog.current(r["spec"]["baseModel"] for r in selected)
    return JobList(count=count, limit=limit, offset=offset,
                   jobs=[job_summary(r, base_model_id=ids.model_id(r["spec"]["baseModel"])) for r in selected])


@router.post("/jobs", status_code=201, response_model=CreatedJob, summary="Create a fine-tuning job")
async def create_job(
    body: JobCreate,
    request: Request,
    principal: Principal = Depends(require("fine-tuning:write")),
    idempotency_key: str | None = Header(default=None),
) -> CreatedJob:
    state = request.app.state
    draft = await _draft(request, principal, body)
    key = await service.signing_key(state.kube, draft)
    created = await service.create_job_once(state.kube, state.store, principal, draft, catalog=state.catalog,
                                            idempotency_key=idempotency_key,
                                            request_body=body.model_dump(by_alias=True))
    return created_job(created, await _file_names(request, principal, created), service.webhook_secret(key, created),
                       base_model_id=await _base_model_id(request, created))


@router.get("/jobs/{job_id}", response_model=JobDetail, summary="Get a fine-tuning job")
async def get_job(job_id: str, request: Request,
                  principal: Principal = Depends(require("fine-tuning:read"))) -> JobDetail:
    resource = await _job(request, principal, job_id)
    return job_detail(resource, await _file_names(request, principal, resource),
                      base_model_id=await _base_model_id(request, resource))


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response,
               summary="Delete a job that is not queued or running, with its artifacts")
async def delete_job(job_id: str, request: Request,
                     principal: Principal = Depends(require("fine-tuning:write"))) -> Response:
    resource = await _job(request, principal, job_id)
    status = job_status(resource)
    if status in ("queued", "running"):
        raise conflict(f"Job '{job_id}' is {status}; stop it first (POST /api/v1/fine-tuning/jobs/{job_id}/stop), "
                       "then delete it.", code="job_active")
    await request.app.state.kube.delete(service.PLURAL, principal.tenant, job_id)
    store = request.app.state.store
    await run_in_threadpool(store.delete, JobFiles.of(store, principal.tenant, job_id).path())
    return Response(status_code=204)


@router.post("/jobs/{job_id}/stop", response_model=StoppedJob,
             summary="Stop a job after its last checkpoint (restart resumes it)")
async def stop_job(job_id: str, request: Request,
                   principal: Principal = Depends(require("fine-tuning:write"))) -> StoppedJob:
    resource = await _job(request, principal, job_id)
    status = job_status(resource)
    if status in ("completed", "failed"):
        raise conflict(f"Job '{job_id}' is {status}; only queued or running jobs can be stopped.")
    if status != "stopped":
        resource = await service.set_spec(request.app.state.kube, principal.tenant, job_id, {"suspend": True})
    return stopped_job(resource, await _file_names(request, principal, resource),
                       base_model_id=await _base_model_id(request, resource))


@router.post("/jobs/{job_id}/restart", response_model=RestartedJob,
             summary="Restart a stopped or failed job from its latest checkpoint")
async def restart_job(job_id: str, request: Request,
                      principal: Principal = Depends(require("fine-tuning:write"))) -> RestartedJob:
    patched = await _request_restart(request, principal, job_id)
    store = request.app.state.store
    steps = await run_in_threadpool(JobFiles.of(store, principal.tenant, job_id).complete_checkpoints)
    return restarted_job(patched, await _file_names(request, principal, patched), steps[-1] if steps else None,
                         base_model_id=await _base_model_id(request, patched))


async def _request_restart(request: Request, principal: Principal, job_id: str) -> dict:
    """Read, decide, write with the read's resourceVersion; when the write loses to
    another writer (the operator updating status), read and decide again. A concurrent
    restart shows up on the re-read as a raised restartCount or a job no longer failed,
    so two restarts make one restart and the second gets 409."""
    first_restart_count: int | None = None
    deadline = time.monotonic() + RESTART_RETRY_SECONDS
    while time.monotonic() < deadline:
        resource = await _job(request, principal, job_id)
        spec, phase = resource["spec"], (resource.get("status") or {}).get("phase")
        status = job_status(resource)
        if spec.get("cancel") or phase == "Cancelled":
            raise conflict(f"Job '{job_id}' was cancelled, which is final; create a new job instead.")
        if status == "stopped":
            return await request.app.state.kube.patch(service.PLURAL, principal.tenant, job_id,
                                                      {"spec": {"suspend": False}})
        if status != "failed":
            raise conflict(f"Job '{job_id}' is {status}; only stopped or failed jobs can be restarted.")
        restart_count = int(spec.get("restartCount") or 0)
        if first_restart_count is None:
            first_restart_count = restart_count
        elif restart_count != first_restart_count:
            raise conflict(f"Job '{job_id}' was restarted by another request.")
        patch = {"metadata": {"resourceVersion": resource["metadata"]["resourceVersion"]},
                 "spec": {"restartCount": restart_count + 1}}
        try:
            return await request.app.state.kube.patch(service.PLURAL, principal.tenant, job_id, patch)
        except OpenAIError as exc:
            if exc.status != 409:
                raise
        await asyncio.sleep(random.uniform(0, RESTART_JITTER_SECONDS))  # out of step with the other writer
    raise conflict(f"Job '{job_id}' kept changing while it was being restarted; try again.")


@router.post("/jobs/{job_id}/deploy", response_model=DeployedJob, summary="Serve a completed job's fine-tuned model")
async def deploy_job(
    job_id: str,
    request: Request,
    principal: Principal = Depends(require("fine-tuning:write")),
    body: Annotated[DeployRequest | None, Body()] = None,
) -> DeployedJob:
    body = body or DeployRequest()
    kube = request.app.state.kube
    resource = await _job(request, principal, job_id)
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
            return deployed_job(job_id, model, shared[0], shared=True)
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
    return deployed_job(job_id, model, created, shared=False)


async def _export(request: Request, principal: Principal, job_id: str, export: exports.Export) -> StreamingResponse:
    """`export` of a completed job as a tar stream, the same archive as the OpenAI API's."""
    resource = await _job(request, principal, job_id)
    status = job_status(resource)
    if status != "completed":
        raise conflict(f"Job '{job_id}' is {status}; its {export.title} can be downloaded once it is completed.")
    return await exports.archive_response(request.app.state.store, resource, export, param="id")


@router.get("/jobs/{job_id}/adapter", response_class=StreamingResponse, responses=exports.TAR_RESPONSES,
            summary="Download a completed job's LoRA adapter as a tar archive")
async def download_adapter(job_id: str, request: Request,
                           principal: Principal = Depends(require("fine-tuning:read"))) -> StreamingResponse:
    return await _export(request, principal, job_id, exports.ADAPTER)


@router.get("/jobs/{job_id}/merged-model", response_class=StreamingResponse, responses=exports.TAR_RESPONSES,
            summary="Download a completed job's merged model (mergeAdapter) as a tar archive")
async def download_merged_model(job_id: str, request: Request,
                                principal: Principal = Depends(require("fine-tuning:read"))) -> StreamingResponse:
    return await _export(request, principal, job_id, exports.MERGED)


@router.get("/stats", response_model=JobStats, summary="Job counts by status in the caller's namespace")
async def job_stats(request: Request, principal: Principal = Depends(require("fine-tuning:read"))) -> JobStats:
    return stats(await service.list_live_jobs(request.app.state.listing, principal.tenant))
