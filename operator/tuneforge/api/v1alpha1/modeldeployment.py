"""ModelDeployment: one base model and any number of LoRA adapters behind an OpenAI API."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from tuneforge.api.v1alpha1.basemodel import ServingEngine
from tuneforge.api.v1alpha1.common import (
    DNS_LABEL_PATTERN,
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


class ModelDeploymentSpec(ApiModel):
    """Desired state of a serving deployment."""

    base_model: str = Field(pattern=DNS_LABEL_PATTERN, max_length=253, json_schema_extra=immutable("baseModel is immutable"))
    """Name of the BaseModel to serve."""
    adapters: list[AdapterRef] = Field(default_factory=list, max_length=512)
    """Adapters loaded at start; more are loaded at runtime by the gateway."""
    engine: ServingEngine | None = None
    """vllm (GPU) or cpu; defaults to the BaseModel's serving engine."""
    replicas: int = Field(default=1, ge=0, le=64)
    """Serving Pods."""
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
    """Available, Progressing."""
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
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )

    kind: str = "ModelDeployment"
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
