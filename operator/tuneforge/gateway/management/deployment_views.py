"""ModelDeployments as the dashboard shows them: what each serves and whether it is ready,
so a user sees at a glance which deployments can take requests and why the others cannot.
Pure, so the replica count and the message are tested on plain dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneforge.api.v1alpha1.common import PODS_ADMITTED
from tuneforge.api.v1alpha1.modeldeployment import ModelDeploymentSpec, wanted_replicas
from tuneforge.gateway.management.protocol import DeploymentEntry


def not_ready_message(status: Mapping[str, Any]) -> str | None:
    """Why a deployment is not Ready: the API server's refusal of its Pods when there is
    one (PodsAdmitted False: Pod Security, quota), which no other condition names, else
    the Available condition's message (the controller's reason for the phase); null when
    it is Ready or no condition says."""
    if status.get("phase") == "Ready":
        return None
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    refused = conditions.get(PODS_ADMITTED, {})
    if refused.get("status") == "False" and refused.get("message"):
        return refused["message"]
    return conditions.get("Available", {}).get("message") or None


def deployment_entry(resource: Mapping[str, Any], *, base_model_id: str, shared: bool = False) -> DeploymentEntry:
    """`base_model_id`: the base's model id (`ModelCatalog.model_id` of spec.baseModel);
    `shared`: a catalog model's deployment in the system namespace, serving every tenant."""
    status = resource.get("status") or {}
    return DeploymentEntry(
        name=resource["metadata"]["name"],
        namespace=resource["metadata"]["namespace"],
        shared=shared,
        base_model=base_model_id,
        phase=status.get("phase") or "Pending",
        replicas=wanted_replicas(ModelDeploymentSpec.model_validate(resource["spec"]), status),
        ready_replicas=status.get("readyReplicas") or 0,
        served_models=status.get("servedModels") or [],
        message=not_ready_message(status),
        created_at=resource["metadata"]["creationTimestamp"],
    )
