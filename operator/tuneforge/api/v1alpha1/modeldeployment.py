"""ModelDeployment: one base model and any number of LoRA adapters behind an OpenAI API."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from tuneforge.api.v1alpha1.autoscaling import Autoscaling, AutoscalingStatus
from tuneforge.api.v1alpha1.basemodel import ServingEngine
from tuneforge.api.v1alpha1.common import (
    DNS_LABEL_PATTERN,
    MAX_LABEL_LENGTH,
    ApiModel,
    Condition,
    CrdInfo,
    Hardware,
    Resource,
    immutable,
)


class AdapterRef(ApiModel):
    """A LoRA adapter to preload."""

    name: str = Field(min_length=1, max_length=253)
    """The model name clients use for this adapter (e.g. a fine-tuned model id)."""
    source: str = Field(pattern=r"^((s3|pvc|file)://.+|ftjob-[a-z0-9]+)$")
    """An adapter directory URI, or the name of a succeeded FineTuningJob in this namespace."""


ROLLOUT_PROGRESSES = ("(has(self.maxSurge) ? self.maxSurge : 0) > 0 || "
                      "(has(self.maxUnavailable) ? self.maxUnavailable : 1) > 0")
"""Evaluated on the object as written, before the API server fills in the defaults."""


class Rollout(ApiModel):
    """How the Deployment replaces Pods on a spec change (apps/v1 RollingUpdate)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": ROLLOUT_PROGRESSES, "message": "maxSurge and maxUnavailable cannot both be 0"}]})

    max_surge: int = Field(default=0, ge=0, le=64)
    """Pods started above the desired count during a rollout. 0 (the default) never needs
    spare GPUs: on a full pool a surge Pod would wait Pending until the rollout fails."""
    max_unavailable: int = Field(default=1, ge=0, le=64)
    """Pods taken down before their replacement is ready. Set maxSurge 1 and maxUnavailable 0
    where spare GPUs exist and capacity must not dip during a rollout."""

    @model_validator(mode="after")
    def _progresses(self) -> Rollout:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("maxSurge and maxUnavailable cannot both be 0")
        return self


class ModelDeploymentSpec(ApiModel):
    """Desired state of a serving deployment."""

    base_model: str = Field(pattern=DNS_LABEL_PATTERN, max_length=MAX_LABEL_LENGTH,
                            json_schema_extra=immutable("baseModel is immutable"))
    """Resource name of the BaseModel to serve; its Pods serve it under its model id."""
    adapters: list[AdapterRef] = Field(default_factory=list, max_length=512)
    """Adapters loaded at start; more are loaded at runtime by the gateway."""
    engine: ServingEngine | None = None
    """vllm (GPU) or cpu; defaults to the BaseModel's serving engine."""
    replicas: int = Field(default=1, ge=0, le=64)
    """Serving Pods, when autoscaling is not set."""
    autoscaling: Autoscaling | None = None
    """Replicas that follow load between minReplicas and maxReplicas (replicas is then
    ignored); a new deployment starts with max(minReplicas, 1)."""
    max_adapters: int | None = Field(default=None, ge=1, le=512)
    """Adapters held loaded at once per Pod (LRU beyond that)."""
    max_adapter_rank: int | None = Field(default=None, ge=1, le=512)
    """Largest LoRA rank accepted."""
    max_model_length: int | None = Field(default=None, ge=16)
    """Context length served."""
    hardware: Hardware | None = None
    """Hardware to serve on; defaults to the BaseModel's serving hardware."""
    engine_args: list[str] = Field(default_factory=list)
    """Extra engine arguments, passed through verbatim."""
    rollout: Rollout = Field(default_factory=Rollout)
    """How Pods are replaced when the spec changes (adapters are loaded at run time and
    never replace Pods)."""


class ModelDeploymentPhase(str, Enum):
    pending = "Pending"
    deploying = "Deploying"
    ready = "Ready"
    degraded = "Degraded"
    failed = "Failed"


class ModelDeploymentStatus(ApiModel):
    """Observed state of a serving deployment."""

    phase: ModelDeploymentPhase | None = None
    """Pending, Deploying, Ready, Degraded or Failed."""
    conditions: list[Condition] = Field(default_factory=list)
    """Available, Progressing; PodsAdmitted (False while the API server refuses the serving
    Pods, with its refusal as the message) once a refusal was seen."""
    observed_generation: int | None = None
    """The generation this status describes."""
    replicas: int | None = None
    """Pods of the current generation."""
    ready_replicas: int | None = None
    """Pods of the current generation that pass their readiness probe."""
    endpoint: str | None = None
    """In-cluster base URL of the OpenAI API (the Service), e.g. http://name.ns.svc:8000/v1."""
    served_models: list[str] = Field(default_factory=list)
    """Model names the deployment answers to: the base model and its preloaded adapters."""
    deployment: str | None = None
    """Name of the apps/v1 Deployment."""
    autoscaling: AutoscalingStatus | None = None
    """The autoscaler's view: load, current and desired replicas, its last decision."""


class ModelDeploymentResource(Resource):
    """A ModelDeployment object."""

    crd = CrdInfo(
        kind="ModelDeployment",
        plural="modeldeployments",
        short_names=["mdep"],
        scope="Namespaced",
        printer_columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel"},
            {"name": "Engine", "type": "string", "jsonPath": ".spec.engine"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
            {"name": "Desired", "type": "integer", "jsonPath": ".status.autoscaling.desiredReplicas", "priority": 1},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )

    kind: str = "ModelDeployment"
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None


def initial_replicas(autoscaling: Autoscaling) -> int:
    """A new deployment comes up (as Knative's initial scale does) so that its first
    requests find it ready; with minReplicas 0 it goes to zero once idle for the delay."""
    return max(autoscaling.min_replicas, 1)


def wanted_replicas(spec: ModelDeploymentSpec, status: Mapping[str, Any]) -> int:
    """The replicas the controller applies and the gateway reports: the spec's, or with
    autoscaling the autoscaler's last decision (status.autoscaling.desiredReplicas, written
    before it scales), within the current bounds; a deployment the autoscaler has not
    decided on yet starts at its initial scale."""
    autoscaling = spec.autoscaling
    if autoscaling is None:
        return spec.replicas
    decided = (status.get("autoscaling") or {}).get("desiredReplicas")
    if decided is None:
        return initial_replicas(autoscaling)
    return max(autoscaling.min_replicas, min(autoscaling.max_replicas, decided))
