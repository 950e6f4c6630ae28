"""The ModelDeployments that serve the caller and their readiness, for a dashboard that
shows what is being served: the caller's own and the catalog's shared ones (which answer
its base-model and on-demand adapter requests). Read-only (jobs are deployed with
POST /jobs/{id}/deploy)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from tuneforge.api.v1alpha1.labels import Label
from tuneforge.config import settings
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.management.deployment_views import deployment_entry
from tuneforge.gateway.management.protocol import DeploymentList

router = APIRouter()


@router.get("/deployments", response_model=DeploymentList, summary="The caller's model deployments and their phase")
async def list_deployments(request: Request,
                           principal: Principal = Depends(require("models:read"))) -> DeploymentList:
    kube = request.app.state.kube
    own = await kube.list("modeldeployments", principal.tenant)
    shared = await kube.list("modeldeployments", settings().system_namespace, label_selector=f"{Label.SHARED}=true")
    resources = sorted([(False, r) for r in own] + [(True, r) for r in shared],
                       key=lambda item: (item[0], item[1]["metadata"]["name"]))
    ids = await request.app.state.catalog.current(r["spec"]["baseModel"] for _, r in resources)
    deployments = [deployment_entry(r, base_model_id=ids.model_id(r["spec"]["baseModel"]), shared=is_shared)
                   for is_shared, r in resources]
    return DeploymentList(count=len(deployments), deployments=deployments)
