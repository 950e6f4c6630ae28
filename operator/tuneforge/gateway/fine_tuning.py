"""/v1/fine_tuning/jobs: the OpenAI fine-tuning API over FineTuningJob resources.

The resource name is the job id. The routes turn OpenAI requests into `JobDraft`s and
state changes, call `fine_tuning_service` with the client and store the app holds, and
render what comes back as OpenAI objects. A succeeded job's adapter and merged model
download as tar archives (`exports`), which the OpenAI API has no object for.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.gateway import exports
from tuneforge.gateway import fine_tuning_service as service
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.errors import bad_request
from tuneforge.gateway.fine_tuning_objects import job_object, openai_status
from tuneforge.gateway.openai_protocol import (
    CreatedFineTuningJob,
    CursorPage,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    Hyperparameters,
    Limit,
)
from tuneforge.gateway.pagination import newest_first, page, resource_name

router = APIRouter(tags=["fine-tuning"])

JOB_ID = "fine_tuning_job_id"


def _hyperparameters(body: FineTuningJobCreate) -> Hyperparameters:
    method = body.method.supervised.hyperparameters if body.method and body.method.supervised else None
    if method is not None and body.hyperparameters is not None and method != body.hyperparameters:
        raise bad_request("Give hyperparameters either at the top level or in method.supervised, not both.",
                          param="hyperparameters", code="conflicting_parameters")
    return method or body.hyperparameters or Hyperparameters()


def _draft(body: FineTuningJobCreate) -> service.JobDraft:
    hyper = _hyperparameters(body)
    nickname = body.suffix is None and body.nickname is not None
    return service.JobDraft(
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
        webhook_url=body.webhook_url,
        params={**service.OPENAI_PARAMS, "suffix": "nickname"} if nickname else service.OPENAI_PARAMS,
    )


@router.post("/fine_tuning/jobs", response_model=CreatedFineTuningJob, summary="Create a fine-tuning job")
async def create_job(
    body: FineTuningJobCreate,
    request: Request,
    principal: Principal = Depends(require("fine-tuning:write")),
    idempotency_key: str | None = Header(default=None),
) -> CreatedFineTuningJob:
    state = request.app.state
    draft = _draft(body)
    key = await service.signing_key(state.kube, draft)
    created = await service.create_job_once(state.kube, state.store, principal, draft, catalog=state.catalog,
                                            idempotency_key=idempotency_key, request_body=body.model_dump())
    [shown] = await _job_objects(request, [created])
    return CreatedFineTuningJob(**shown.model_dump(), webhook_secret=service.webhook_secret(key, created))


async def _job_objects(request: Request, resources: list[dict]) -> list[FineTuningJob]:
    """The jobs as OpenAI objects, each naming its base model by model id."""
    catalog = await request.app.state.catalog.current(r["spec"]["baseModel"] for r in resources)
    return [job_object(r, base_model_id=catalog.model_id(r["spec"]["baseModel"])) for r in resources]


def _metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters, as the OpenAI API takes them."""
    filters = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("metadata[") and key.endswith("]"):
            filters[key[len("metadata[") : -1]] = value
    return filters


@router.get("/fine_tuning/jobs", response_model=CursorPage[FineTuningJob], summary="List fine-tuning jobs")
async def list_jobs(
    request: Request,
    principal: Principal = Depends(require("fine-tuning:read")),
    after: str | None = None,
    limit: Limit = 20,
) -> CursorPage:
    filters = _metadata_filter(request)
    jobs = newest_first(await service.list_jobs(request.app.state.listing, principal.tenant))
    if filters:
        jobs = [job for job in jobs if all((job["spec"].get("metadata") or {}).get(k) == v for k, v in filters.items())]
    selected = page(jobs, after=after, limit=limit, ident=resource_name)
    return selected.model_copy(update={"data": await _job_objects(request, selected.data)})


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}", response_model=FineTuningJob,
            summary="Retrieve a fine-tuning job")
async def retrieve_job(fine_tuning_job_id: str, request: Request,
                       principal: Principal = Depends(require("fine-tuning:read"))) -> FineTuningJob:
    resource = await service.find_job(request.app.state.kube, principal.tenant, fine_tuning_job_id, param=JOB_ID)
    [shown] = await _job_objects(request, [resource])
    return shown


async def _set(request: Request, principal: Principal, job_id: str, field: str, value: bool,
               refusal: Callable[[dict], str | None]) -> FineTuningJob:
    """Writes spec.`field` unless `refusal` gives the reason the job's state forbids it."""
    kube = request.app.state.kube
    resource = await service.find_job(kube, principal.tenant, job_id, param=JOB_ID)
    reason = refusal(resource)
    if reason:
        raise bad_request(reason, param=JOB_ID, code="invalid_job_state")
    [shown] = await _job_objects(request, [await service.set_spec(kube, principal.tenant, job_id, {field: value})])
    return shown


def _finished(resource: dict) -> str | None:
    status = openai_status(resource)
    if status in ("succeeded", "failed", "cancelled"):
        return f"The job has already {'been cancelled' if status == 'cancelled' else status}."
    return None


def _not_paused(resource: dict) -> str | None:
    return None if openai_status(resource) == "paused" else "Only a paused job can be resumed."


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", response_model=FineTuningJob,
             summary="Cancel a fine-tuning job")
async def cancel_job(fine_tuning_job_id: str, request: Request,
                     principal: Principal = Depends(require("fine-tuning:write"))) -> FineTuningJob:
    return await _set(request, principal, fine_tuning_job_id, "cancel", True, _finished)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/pause", response_model=FineTuningJob,
             summary="Pause a fine-tuning job")
async def pause_job(fine_tuning_job_id: str, request: Request,
                    principal: Principal = Depends(require("fine-tuning:write"))) -> FineTuningJob:
    return await _set(request, principal, fine_tuning_job_id, "suspend", True, _finished)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/resume", response_model=FineTuningJob,
             summary="Resume a paused fine-tuning job")
async def resume_job(fine_tuning_job_id: str, request: Request,
                     principal: Principal = Depends(require("fine-tuning:write"))) -> FineTuningJob:
    return await _set(request, principal, fine_tuning_job_id, "suspend", False, _not_paused)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events", response_model=CursorPage[FineTuningJobEvent],
            summary="List a job's events, newest first")
async def list_events(fine_tuning_job_id: str, request: Request,
                      principal: Principal = Depends(require("fine-tuning:read")),
                      after: str | None = None, limit: Limit = 20) -> CursorPage:
    state = request.app.state
    await service.find_job(state.kube, principal.tenant, fine_tuning_job_id, param=JOB_ID)
    events = await run_in_threadpool(service.read_events, state.store, principal.tenant, fine_tuning_job_id)
    return page(events, after=after, limit=limit)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
            response_model=CursorPage[FineTuningJobCheckpoint], summary="List a job's checkpoints, newest first")
async def list_checkpoints(fine_tuning_job_id: str, request: Request,
                           principal: Principal = Depends(require("fine-tuning:read")),
                           after: str | None = None, limit: Limit = 10) -> CursorPage:
    state = request.app.state
    resource = await service.find_job(state.kube, principal.tenant, fine_tuning_job_id, param=JOB_ID)
    base = resource["spec"]["baseModel"]
    base_model_id = (await state.catalog.current([base])).model_id(base)
    checkpoints = await run_in_threadpool(service.read_checkpoints, state.store, resource, base_model_id)
    return page(checkpoints, after=after, limit=limit)


async def _export(request: Request, principal: Principal, job_id: str, export: exports.Export) -> StreamingResponse:
    """`export` of a succeeded job as a tar stream; any other state is invalid_job_state,
    like cancelling a finished job."""
    state = request.app.state
    resource = await service.find_job(state.kube, principal.tenant, job_id, param=JOB_ID)
    status = openai_status(resource)
    if status != "succeeded":
        raise bad_request(f"Job '{job_id}' is {status}; its {export.title} can be downloaded once it has succeeded.",
                          param=JOB_ID, code="invalid_job_state")
    return await exports.archive_response(state.store, resource, export, param=JOB_ID)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/adapter", response_class=StreamingResponse,
            responses=exports.TAR_RESPONSES, summary="Download a succeeded job's LoRA adapter as a tar archive")
async def download_adapter(fine_tuning_job_id: str, request: Request,
                           principal: Principal = Depends(require("fine-tuning:read"))) -> StreamingResponse:
    return await _export(request, principal, fine_tuning_job_id, exports.ADAPTER)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/merged_model", response_class=StreamingResponse,
            responses=exports.TAR_RESPONSES,
            summary="Download a succeeded job's merged model (spec.mergeAdapter) as a tar archive")
async def download_merged_model(fine_tuning_job_id: str, request: Request,
                                principal: Principal = Depends(require("fine-tuning:read"))) -> StreamingResponse:
    return await _export(request, principal, fine_tuning_job_id, exports.MERGED)
