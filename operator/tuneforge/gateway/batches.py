"""/v1/batches: the OpenAI Batch API over BatchJob resources.

The controller and the batch runner fill status (phase, counts, timestamps, output and
error file ids); the gateway writes spec and renders status as the OpenAI batch object.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.api.v1alpha1 import BatchJobResource, BatchJobSpec, batchjob
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.errors import bad_request, not_found
from tuneforge.gateway.files import file_meta, validation_error
from tuneforge.gateway.ids import create_once
from tuneforge.gateway.openai_types import BatchCreate, Limit, page, unix

router = APIRouter(tags=["batches"])

PLURAL = "batchjobs"
ENDPOINTS = ("/v1/chat/completions",)
WINDOWS = ("1h", "3h", "6h", "12h", "24h")
_STATUS = batchjob.OPENAI_STATUS
_TIMESTAMPS = ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
               "cancelling_at", "cancelled_at")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def batch_object(resource: dict) -> dict:
    """A complete OpenAI `batch` object; timestamps are integers (Unix seconds)."""
    meta, spec, status = resource["metadata"], resource["spec"], resource.get("status") or {}
    phase = status.get("phase")
    state = _STATUS.get(phase, "validating")
    if spec.get("cancel") and phase not in batchjob.TERMINAL_PHASES and phase != "Cancelling":
        state = "cancelling"
    counts = status.get("requestCounts") or {}
    usage = status.get("usage")
    errors = status.get("errors") or []
    return {
        "object": "batch",
        "id": meta["name"],
        "endpoint": spec.get("endpoint", "/v1/chat/completions"),
        "input_file_id": spec["inputFile"],
        "completion_window": spec.get("completionWindow", "24h"),
        "status": state,
        "created_at": unix(status.get("createdAt") or meta["creationTimestamp"]),
        **{name: unix(status.get(_camel(name))) for name in _TIMESTAMPS},
        "output_file_id": status.get("outputFile"),
        "error_file_id": status.get("errorFile"),
        "errors": {
            "object": "list",
            "data": [{"code": e.get("code"), "message": e.get("message"), "param": e.get("param"), "line": e.get("line")}
                     for e in errors],
        } if errors else None,
        "request_counts": {key: counts.get(key, 0) for key in ("total", "completed", "failed")},
        "usage": {
            "input_tokens": usage.get("inputTokens", 0),
            "output_tokens": usage.get("outputTokens", 0),
            "total_tokens": usage.get("totalTokens", 0),
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        } if usage else None,
        "metadata": spec.get("metadata"),
    }


def _check_input(store, namespace: str, file_id: str) -> None:
    meta = file_meta(store, namespace, file_id)
    if meta is None:
        raise bad_request(f"File '{file_id}' does not exist.", param="input_file_id", code="invalid_file")
    if meta["purpose"] != "batch":
        raise bad_request(f"File '{file_id}' has purpose '{meta['purpose']}', not 'batch'.", param="input_file_id",
                          code="invalid_file_purpose")
    if meta["status"] != "processed":
        error = validation_error(store, namespace, file_id) or {}
        raise bad_request(f"File '{file_id}' is not a valid batch file: {meta.get('status_details')}",
                          param="input_file_id", code=error.get("code", "invalid_file"))


@router.post("/batches", summary="Create a batch")
async def create_batch(
    body: BatchCreate,
    request: Request,
    principal: Principal = Depends(require("batches:write")),
    idempotency_key: str | None = Header(default=None),
) -> dict:
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


@router.get("/batches", summary="List batches, newest first")
async def list_batches(request: Request, principal: Principal = Depends(require("batches:read")),
                       after: str | None = None, limit: Limit = 20) -> dict:
    resources = await request.app.state.kube.list(PLURAL, principal.tenant)
    resources.sort(key=lambda r: (r["metadata"]["creationTimestamp"], r["metadata"]["name"]), reverse=True)
    return page([batch_object(r) for r in resources], after=after, limit=limit)


@router.get("/batches/{batch_id}", summary="Retrieve a batch")
async def retrieve_batch(batch_id: str, request: Request, principal: Principal = Depends(require("batches:read"))) -> dict:
    return batch_object(await _batch(request, principal, batch_id))


@router.post("/batches/{batch_id}/cancel", summary="Cancel a batch")
async def cancel_batch(batch_id: str, request: Request, principal: Principal = Depends(require("batches:write"))) -> dict:
    resource = await _batch(request, principal, batch_id)
    if (resource.get("status") or {}).get("phase") in batchjob.TERMINAL_PHASES:
        raise bad_request(f"The batch is already {batch_object(resource)['status']}.", param="batch_id",
                          code="invalid_batch_state")
    patched = await request.app.state.kube.patch(PLURAL, principal.tenant, batch_id, {"spec": {"cancel": True}})
    return batch_object(patched)
