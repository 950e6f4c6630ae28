"""/v1/batches: the OpenAI Batch API over BatchJob resources.

The controller and the batch runner fill status (phase, counts, timestamps, output and
error file ids); the gateway writes spec and renders status as the OpenAI batch object.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.api.v1alpha1 import BatchJobResource, BatchJobSpec, batchjob
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.batch_objects import batch_object, batch_status
from tuneforge.gateway.errors import bad_request, not_found
from tuneforge.gateway.files import file_meta, validation_error
from tuneforge.gateway.ids import create_once
from tuneforge.gateway.openai_protocol import Batch, BatchCreate, CursorPage, Limit
from tuneforge.gateway.pagination import newest_first, page, resource_name

router = APIRouter(tags=["batches"])

PLURAL = "batchjobs"
ENDPOINTS = ("/v1/chat/completions",)
WINDOWS = ("1h", "3h", "6h", "12h", "24h")


def _check_input(store, namespace: str, file_id: str) -> None:
    meta = file_meta(store, namespace, file_id)
    if meta is None:
        raise bad_request(f"File '{file_id}' does not exist.", param="input_file_id", code="invalid_file")
    if meta.purpose != "batch":
        raise bad_request(f"File '{file_id}' has purpose '{meta.purpose}', not 'batch'.", param="input_file_id",
                          code="invalid_file_purpose")
    if meta.status != "processed":
        error = validation_error(store, namespace, file_id) or {}
        raise bad_request(f"File '{file_id}' is not a valid batch file: {meta.status_details}",
                          param="input_file_id", code=error.get("code", "invalid_file"))


@router.post("/batches", response_model=Batch, summary="Create a batch")
async def create_batch(
    body: BatchCreate,
    request: Request,
    principal: Principal = Depends(require("batches:write")),
    idempotency_key: str | None = Header(default=None),
) -> Batch:
    kube = request.app.state.kube
    if body.endpoint not in ENDPOINTS:
        raise bad_request(f"Unsupported endpoint '{body.endpoint}'; use one of {', '.join(ENDPOINTS)}.",
                          param="endpoint", code="invalid_endpoint")
    if body.completion_window not in WINDOWS:
        raise bad_request(f"Unsupported completion_window '{body.completion_window}'; use one of {', '.join(WINDOWS)}.",
                          param="completion_window", code="invalid_completion_window")

    async def build(name: str) -> dict:
        await run_in_threadpool(_check_input, request.app.state.store, principal.tenant, body.input_file_id)
        spec = BatchJobSpec(input_file=body.input_file_id, endpoint=body.endpoint,
                            completion_window=body.completion_window, metadata=body.metadata)
        return BatchJobResource(metadata={"name": name, "namespace": principal.tenant}, spec=spec).to_wire()

    return batch_object(await create_once(kube, PLURAL, principal.tenant, prefix="batch",
                                          idempotency_key=idempotency_key, request_body=body.model_dump(), build=build))


async def _batch(request: Request, principal: Principal, batch_id: str) -> dict:
    resource = await request.app.state.kube.get(PLURAL, principal.tenant, batch_id) if batch_id.startswith("batch-") else None
    if resource is None:
        raise not_found("batch", batch_id, param="batch_id")
    return resource


@router.get("/batches", response_model=CursorPage[Batch], summary="List batches, newest first")
async def list_batches(request: Request, principal: Principal = Depends(require("batches:read")),
                       after: str | None = None, limit: Limit = 20) -> CursorPage:
    resources = newest_first(await request.app.state.listing.list(PLURAL, principal.tenant))
    selected = page(resources, after=after, limit=limit, ident=resource_name)
    return selected.model_copy(update={"data": [batch_object(r) for r in selected.data]})


@router.get("/batches/{batch_id}", response_model=Batch, summary="Retrieve a batch")
async def retrieve_batch(batch_id: str, request: Request,
                         principal: Principal = Depends(require("batches:read"))) -> Batch:
    return batch_object(await _batch(request, principal, batch_id))


@router.post("/batches/{batch_id}/cancel", response_model=Batch, summary="Cancel a batch")
async def cancel_batch(batch_id: str, request: Request,
                       principal: Principal = Depends(require("batches:write"))) -> Batch:
    resource = await _batch(request, principal, batch_id)
    if (resource.get("status") or {}).get("phase") in batchjob.TERMINAL_PHASES:
        raise bad_request(f"The batch is already {batch_status(resource)}.", param="batch_id",
                          code="invalid_batch_state")
    patched = await request.app.state.kube.patch(PLURAL, principal.tenant, batch_id, {"spec": {"cancel": True}})
    return batch_object(patched)
