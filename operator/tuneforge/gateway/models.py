"""/v1/models: the catalog, the caller's fine-tuned models, and what the caller has deployed.

Catalog models are listed by model id; retrieving one by its alias (the BaseModel's
resource name) answers with the same object, id and all."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.api.v1alpha1.labels import Label
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.catalog import fine_tuned_job, is_live_model
from tuneforge.gateway.errors import OpenAIError, not_found
from tuneforge.gateway.model_objects import base_model_object, deployed_model_object, fine_tuned_model_object
from tuneforge.gateway.openai_protocol import DeletedModel, ModelList, ModelObject
from tuneforge.jobfiles import ADAPTER, MERGED, JobFiles
from tuneforge.storage import ArtifactStore

router = APIRouter(tags=["models"])


async def _all(request: Request, principal: Principal) -> list[ModelObject]:
    """Every model the caller can name, by id; a name that is both (a deployment serving a
    catalog model) is listed once, as the first kind."""
    kube = request.app.state.kube
    catalog = await request.app.state.catalog.fresh()
    models: dict[str, ModelObject] = {m.id: m for m in map(base_model_object, catalog.accepted())}
    for job in await request.app.state.listing.list("finetuningjobs", principal.tenant):
        if is_live_model(job):
            parent = catalog.model_id(job["spec"]["baseModel"])
            models.setdefault(job["status"]["fineTunedModel"], fine_tuned_model_object(job, parent))
    for deployment in await kube.list("modeldeployments", principal.tenant):
        parent = catalog.model_id(deployment["spec"]["baseModel"])
        for name in (deployment.get("status") or {}).get("servedModels") or []:
            models.setdefault(name, deployed_model_object(deployment, name, parent))
    return sorted(models.values(), key=lambda m: m.id)


@router.get("/models", response_model=ModelList, summary="List models")
async def list_models(request: Request, principal: Principal = Depends(require("models:read"))) -> ModelList:
    return ModelList(data=await _all(request, principal))


@router.get("/models/{model_id:path}", response_model=ModelObject,
            summary="Retrieve a model (ids may contain ':' and '/')")
async def retrieve_model(model_id: str, request: Request,
                         principal: Principal = Depends(require("models:read"))) -> ModelObject:
    kube, catalog = request.app.state.kube, request.app.state.catalog
    if job := await fine_tuned_job(kube, principal.tenant, model_id):
        base = job["spec"]["baseModel"]
        return fine_tuned_model_object(job, (await catalog.current([base])).model_id(base))
    if entry := await catalog.resolve(model_id):
        return base_model_object(entry)
    for model in await _all(request, principal):
        if model.id == model_id:
            return model
    raise not_found("model", model_id, param="model")


@router.delete("/models/{model_id:path}", response_model=DeletedModel, summary="Delete a fine-tuned model")
async def delete_model(model_id: str, request: Request,
                       principal: Principal = Depends(require("fine-tuning:write"))) -> DeletedModel:
    kube = request.app.state.kube
    job = await fine_tuned_job(kube, principal.tenant, model_id)
    if job is None:
        if await request.app.state.catalog.resolve(model_id):
            raise OpenAIError(403, "Catalog models cannot be deleted through the API.", param="model",
                              code="model_not_deletable")
        raise not_found("model", model_id, param="model")
    name = job["metadata"]["name"]
    await kube.patch("finetuningjobs", principal.tenant, name, {"metadata": {"labels": {Label.MODEL_DELETED: "true"}}})
    store: ArtifactStore = request.app.state.store
    files = JobFiles.of(store, principal.tenant, name)
    for published in (ADAPTER, MERGED):  # the model's weights, in both forms the job may have made
        await run_in_threadpool(store.delete, files.path(published))
    return DeletedModel(id=model_id)
