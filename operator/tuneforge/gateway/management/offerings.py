"""What the platform offers: fine-tunable base models, hardware profiles (from
TUNEFORGE_HARDWARE_PROFILES, rendered from the chart's values) and cost estimates."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.api.v1alpha1.basemodel import model_id_of
from tuneforge.config import find_hardware_profile, settings
from tuneforge.gateway import fine_tuning_service as service
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.errors import bad_request
from tuneforge.gateway.files import fine_tune_summary
from tuneforge.gateway.management.catalog_views import base_model_entry, hardware_entry, is_offered_base_model
from tuneforge.gateway.management.estimate import (
    DatasetSize,
    EstimateError,
    calibration_samples,
    dataset_size,
    estimate,
    estimate_profile,
)
from tuneforge.gateway.management.protocol import BaseModelList, CostEstimate, EstimateRequest, HardwareList

router = APIRouter()


@router.get("/base-models", response_model=BaseModelList, summary="Fine-tunable, ready catalog models")
async def base_models(request: Request,
                      principal: Principal = Depends(require("fine-tuning:read"))) -> BaseModelList:
    models = sorted((base_model_entry(r) for r in (await request.app.state.catalog.fresh()).accepted()
                     if is_offered_base_model(r)), key=lambda m: m.id)
    return BaseModelList(count=len(models), models=models)


@router.get("/hardware", response_model=HardwareList, summary="Hardware profiles jobs can train on")
async def hardware(principal: Principal = Depends(require("fine-tuning:read"))) -> HardwareList:
    config = settings()
    profiles = [hardware_entry(p, config.default_hardware_profile) for p in config.hardware_profiles]
    return HardwareList(count=len(profiles), default=config.default_hardware_profile, hardware=profiles)


async def _dataset_size(request: Request, principal: Principal, body: EstimateRequest) -> DatasetSize:
    """The dataset's tokens (docs/management-api.md, estimate-cost), measuring the named
    training file when the request gives no token count."""
    if body.dataset_size is None and body.dataset_tokens is None and body.training_file is None:
        raise bad_request("Give datasetSize (training examples), datasetTokens or trainingFile.", param="datasetSize",
                          code="missing_required_parameter")
    summary = None
    if body.training_file is not None and body.dataset_tokens is None:
        store = request.app.state.store
        file_id = await service.resolve_file_reference(store, principal.tenant, body.training_file, "trainingFile")
        await run_in_threadpool(service.check_fine_tune_file, store, principal.tenant, file_id, "trainingFile")
        summary = await run_in_threadpool(fine_tune_summary, store, principal.tenant, file_id)
        if summary is None:
            raise bad_request(f"File '{body.training_file}' is not a valid fine-tuning file.", param="trainingFile",
                              code="invalid_file")
    try:
        return dataset_size(examples=body.dataset_size, tokens=body.dataset_tokens,
                            file_examples=summary.n_examples if summary else None,
                            file_characters=summary.n_characters if summary else 0,
                            file_messages=summary.n_messages if summary else 0)
    except EstimateError as exc:
        raise bad_request(str(exc), param="trainingFile", code="cannot_estimate") from exc


@router.post("/estimate-cost", response_model=CostEstimate, summary="Estimate the time and cost of a job")
async def estimate_cost(body: EstimateRequest, request: Request,
                        principal: Principal = Depends(require("fine-tuning:read"))) -> CostEstimate:
    kube = request.app.state.kube
    base = await request.app.state.catalog.resolve(body.base_model)
    if base is None or not base["spec"].get("fineTunable", True):
        raise bad_request(f"Model '{body.base_model}' is not a fine-tunable catalog model.", param="baseModel",
                          code="model_not_available")
    config = settings()
    profile_name = body.hardware_profile or estimate_profile(base["spec"], config.default_hardware_profile)
    if profile_name is None:
        raise bad_request("No hardware profile to estimate on: the platform configures none by default; name one "
                          "in hardwareProfile.", param="hardwareProfile", code="no_hardware_profile")
    profile = find_hardware_profile(config, profile_name)
    if profile is None:
        offered = ", ".join(p.name for p in config.hardware_profiles) or "none"
        raise bad_request(f"Hardware profile '{profile_name}' does not exist; offered: {offered}.",
                          param="hardwareProfile", code="invalid_hardware_profile")
    size = await _dataset_size(request, principal, body)
    catalog = {r["metadata"]["name"]: r for r in await kube.list_cluster("basemodels")}
    jobs = await service.list_live_jobs(request.app.state.listing, principal.tenant)
    samples = calibration_samples(jobs, catalog, profile=profile.name, default=config.default_hardware_profile)
    try:
        result = estimate(base_model=base["metadata"]["name"], parameter_count=base["spec"].get("parameterCount"),
                          dataset_tokens=size.tokens, epochs=body.epochs, profile=profile, samples=samples)
    except EstimateError as exc:
        raise bad_request(str(exc), param="baseModel", code="cannot_estimate") from exc
    return CostEstimate(
        estimated_cost=result.rounded_cost(),
        estimated_time_minutes=result.minutes(),
        currency=result.currency,
        base_model=model_id_of(base),
        dataset_size=size.examples,
        dataset_tokens=size.tokens,
        tokens_per_example=size.tokens_per_example,
        tokens_basis=size.basis,
        epochs=body.epochs,
        total_tokens=result.total_tokens,
        hardware_profile=profile.name,
        throughput_tokens_per_second=round(result.tokens_per_second, 3),
        basis=result.basis,
        calibration_jobs=result.samples,
    )
