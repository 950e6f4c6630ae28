"""/v1/models: the catalog, the caller's fine-tuned models, and what the caller has deployed."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.api.v1alpha1.labels import Label
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.catalog import catalog_model, fine_tuned_job, is_live_model
from tuneforge.gateway.errors import OpenAIError, not_found
from tuneforge.gateway.openai_types import unix
from tuneforge.storage import ArtifactStore

router = APIRouter(tags=["models"])


def _base(resource: dict) -> dict:
    spec = resource["spec"]
    return {
        "id": resource["metadata"]["name"],
        "object": "model",
        "created": unix(resource["metadata"]["creationTimestamp"]),
        "owned_by": spec.get("provider") or "tuneforge",
        "fine_tunable": spec.get("fineTunable", True),
        "max_context_length": spec.get("maxContextLength"),
        "kind": "base",
    }


def _fine_tuned(job: dict) -> dict:
    status = job["status"]
    return {
        "id": status["fineTunedModel"],
        "object": "model",
        "created": unix(status.get("finishedAt") or job["metadata"]["creationTimestamp"]),
        "owned_by": job["metadata"]["namespace"],
        "parent": job["spec"]["baseModel"],
        "fine_tuning_job": job["metadata"]["name"],
        "kind": "fine-tuned",
    }


def _deployed(deployment: dict, name: str) -> dict:
    return {
        "id": name,
        "object": "model",
        "created": unix(deployment["metadata"]["creationTimestamp"]),
        "owned_by": deployment["metadata"]["namespace"],
        "parent": deployment["spec"]["baseModel"],
        "deployment": deployment["metadata"]["name"],
        "kind": "deployed",
    }


async def _all(request: Request, principal: Principal) -> list[dict]:
    kube = request.app.state.kube
    models = {m["id"]: m for m in map(_base, await kube.list_cluster("basemodels"))}
    for job in await kube.list("finetuningjobs", principal.tenant):
        if is_live_model(job):
            models.setdefault(job["status"]["fineTunedModel"], _fine_tuned(job))
    for deployment in await kube.list("modeldeployments", principal.tenant):
        for name in (deployment.get("status") or {}).get("servedModels") or []:
            models.setdefault(name, _deployed(deployment, name))
    return sorted(models.values(), key=lambda m: m["id"])


@router.get("/models", summary="List models")
async def list_models(request: Request, principal: Principal = Depends(require("models:read"))) -> dict:
    return {"object": "list", "data": await _all(request, principal)}


@router.get("/models/{model_id:path}", summary="Retrieve a model (ids may contain ':' and '/')")
async def retrieve_model(model_id: str, request: Request, principal: Principal = Depends(require("models:read"))) -> dict:
    kube = request.app.state.kube
    if job := await fine_tuned_job(kube, principal.tenant, model_id):
        return _fine_tuned(job)
    for model in await _all(request, principal):
        if model["id"] == model_id:
            return model
    raise not_found("model", model_id, param="model")


@router.delete("/models/{model_id:path}", summary="Delete a fine-tuned model")
async def delete_model(model_id: str, request: Request,
                       principal: Principal = Depends(require("fine-tuning:write"))) -> dict:
    kube = request.app.state.kube
    job = await fine_tuned_job(kube, principal.tenant, model_id)
    if job is None:
        if await catalog_model(kube, model_id):
            raise OpenAIError(403, "Catalog models cannot be deleted through the API.", param="model",
                              code="model_not_deletable")
        raise not_found("model", model_id, param="model")
    name = job["metadata"]["name"]
    await kube.patch("finetuningjobs", principal.tenant, name, {"metadata": {"labels": {Label.MODEL_DELETED: "true"}}})
    store: ArtifactStore = request.app.state.store
    await run_in_threadpool(store.delete, f"{store.fine_tuning_dir(principal.tenant, name)}/adapter")
    return {"id": model_id, "object": "model", "deleted": True}
