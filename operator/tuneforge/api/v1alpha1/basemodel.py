"""BaseModel: a cluster-wide catalog entry for a model that can be served or fine-tuned."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from tuneforge.api.v1alpha1.common import ApiModel, Condition, CrdInfo, Hardware, Resource


class ModelSource(ApiModel):
    """Where the weights live."""

    uri: str = Field(pattern=r"^(file|pvc|s3|gguf)://.+$")
    """file:///path, pvc://<claim>/<path>, s3://bucket/prefix (a Hugging Face directory
    with safetensors), or gguf://<python-package>/<file.gguf> for weights shipped in a
    Python package (dequantized once on first use)."""


class ServingEngine(str, Enum):
    vllm = "vllm"
    cpu = "cpu"


class ServingDefaults(ApiModel):
    """Defaults for deployments of this model, including the shared multi-LoRA one."""

    engine: ServingEngine = ServingEngine.vllm
    """vllm on GPUs; cpu runs tuneforge's built-in engine (transformers + peft)."""
    max_adapters: int = Field(default=8, ge=1, le=512)
    """LoRA adapters held loaded at once (LRU beyond that)."""
    max_adapter_rank: int = Field(default=64, ge=1, le=512)
    """Largest LoRA rank the engine must accept."""
    max_model_length: int | None = Field(default=None, ge=16)
    """Context length to serve with; defaults to the model's maxContextLength."""
    replicas: int = Field(default=1, ge=0, le=64)
    """Replicas of the shared deployment."""
    hardware: Hardware | None = None
    """Hardware for serving; defaults to the model's defaultHardware."""
    engine_args: list[str] = Field(default_factory=list)
    """Extra engine arguments passed through verbatim (e.g. --enforce-eager)."""
    startup_timeout_seconds: int = Field(default=1800, ge=60, le=86400)
    """How long a serving Pod may take to load the weights (download, dequantize, CUDA
    graphs) before it counts as failed; a 70B model from S3 may need more than the default."""


class BaseModelSpec(ApiModel):
    """Desired state of a catalog entry."""

    source: ModelSource
    """Where the weights live."""
    display_name: str | None = Field(default=None, max_length=200)
    """Human-friendly name."""
    provider: str | None = Field(default=None, max_length=100)
    """Who made the model, e.g. HuggingFaceTB."""
    description: str | None = Field(default=None, max_length=2000)
    """What the model is good for."""
    fine_tunable: bool = True
    """Whether FineTuningJobs may use this model."""
    max_context_length: int = Field(default=2048, ge=16)
    """Longest sequence the model supports, in tokens."""
    parameter_count: int | None = Field(default=None, ge=1)
    """Number of parameters; used for throughput and cost estimates."""
    supported_tasks: list[str] = Field(default_factory=lambda: ["chat"])
    """Tasks the model is offered for, e.g. chat."""
    default_hardware: str | None = None
    """Hardware profile used when a job or deployment names none."""
    serving: ServingDefaults = Field(default_factory=ServingDefaults)
    """Serving defaults."""
    shared_deployment: bool = True
    """Keep one shared multi-LoRA ModelDeployment of this model so fine-tuned models are
    served with no deploy step."""


class BaseModelPhase(str, Enum):
    pending = "Pending"
    ready = "Ready"
    failed = "Failed"


class BaseModelStatus(ApiModel):
    """Observed state of a catalog entry."""

    phase: BaseModelPhase | None = None
    """Pending, Ready or Failed."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready: the source URI resolves and the entry can be used."""
    observed_generation: int | None = None
    """The generation this status describes."""


class BaseModelResource(Resource):
    """A BaseModel object."""

    crd = CrdInfo(
        kind="BaseModel",
        plural="basemodels",
        short_names=["bm"],
        scope="Cluster",
        printer_columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Fine-tunable", "type": "boolean", "jsonPath": ".spec.fineTunable"},
            {"name": "Context", "type": "integer", "jsonPath": ".spec.maxContextLength"},
            {"name": "Source", "type": "string", "jsonPath": ".spec.source.uri", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )

    kind: str = "BaseModel"
    spec: BaseModelSpec
    status: BaseModelStatus | None = None


def model_id_of(basemodel: dict) -> str:
    """The id users call a catalog model by in every API: `spec.modelId` when set (for
    example `HuggingFaceTB/SmolLM2-135M-Instruct`), else the resource name, which is what
    entries made before model ids existed were called."""
    return (basemodel.get("spec") or {}).get("modelId") or basemodel["metadata"]["name"]
