"""BaseModel: a cluster-wide catalog entry for a model that can be served or fine-tuned.

Users call a catalog model by its model id (`spec.modelId`, a Hugging Face style repo id
such as `HuggingFaceTB/SmolLM2-135M-Instruct`), which a Kubernetes name cannot hold; the
resource name stays a DNS label that FineTuningJobs and ModelDeployments reference, and
every API also accepts it as an alias. `ModelCatalog` is the one rule for which entry an
id means, so the BaseModel controller (which refuses an entry whose id is taken) and the
gateway (which resolves ids) agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from pydantic import Field

from tuneforge.api.v1alpha1.autoscaling import Autoscaling
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
    """Replicas of the shared deployment, when autoscaling is not set."""
    autoscaling: Autoscaling | None = None
    """Autoscaling of the shared deployment (see ModelDeployment's spec.autoscaling)."""
    hardware: Hardware | None = None
    """Hardware for serving; defaults to the model's defaultHardware."""
    engine_args: list[str] = Field(default_factory=list)
    """Extra engine arguments passed through verbatim (e.g. --enforce-eager)."""
    startup_timeout_seconds: int = Field(default=1800, ge=60, le=86400)
    """How long a serving Pod may take to load the weights (download, dequantize, CUDA
    graphs) before it counts as failed; a 70B model from S3 may need more than the default."""


MODEL_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$"
"""A model id: letters of either case, digits, `.`, `_` and `-`, in segments joined by single
`/` (a Hugging Face repo id, `meta-llama/Llama-3.1-8B-Instruct`). No `:`, which separates
the parts of a fine-tuned id (`ft:<model id>:<namespace>:<suffix>:<job>`), no whitespace,
and no segment starting with `.` or `-`, so an id is also a clean URL path
(`/v1/models/<id>`) with no `.` or `..` segment a client could normalise away."""
MODEL_ID_MAX_LENGTH = 128
MODEL_ID = re.compile(MODEL_ID_PATTERN)


class BaseModelSpec(ApiModel):
    """Desired state of a catalog entry."""

    model_id: str | None = Field(default=None, max_length=MODEL_ID_MAX_LENGTH, pattern=MODEL_ID_PATTERN)
    """The id users call the model by in every API, e.g. HuggingFaceTB/SmolLM2-135M-Instruct:
    letters of either case, digits, '.', '_' and '-', in segments joined by '/'; never ':'.
    Compared case-sensitively and unique across the catalog: an entry claiming the id or
    resource name of an older entry is not Ready (reason DuplicateModelId). Without it the
    resource name is the id; the resource name always works as an alias."""
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
            {"name": "Model ID", "type": "string", "jsonPath": ".spec.modelId"},
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

    @property
    def model_id(self) -> str:
        """The id users call this model by (`model_id_of`)."""
        return model_id_of({"metadata": self.metadata, "spec": {"modelId": self.spec.model_id}})


def model_id_of(basemodel: Mapping[str, Any]) -> str:
    """The id users call a catalog model by in every API: `spec.modelId` when set (for
    example `HuggingFaceTB/SmolLM2-135M-Instruct`), else the resource name, which is what
    entries made before model ids existed were called."""
    return (basemodel.get("spec") or {}).get("modelId") or basemodel["metadata"]["name"]


def _age(basemodel: Mapping[str, Any]) -> tuple[str, str]:
    """Oldest first: creationTimestamp (RFC 3339 strings of one format compare as the times
    they denote), then the name, so two entries created in the same second still order."""
    meta = basemodel["metadata"]
    return meta.get("creationTimestamp") or "", meta["name"]


class Clash(NamedTuple):
    """Why a catalog entry is refused: the older entry holding an id it claims."""

    holder: str
    """The resource name of the older entry."""
    claim: str
    """The id or resource name both claim."""

    def message(self, name: str) -> str:
        return f"BaseModel {name!r} claims {self.claim!r}, which the older BaseModel {self.holder!r} already holds"


@dataclass(frozen=True)
class ModelCatalog:
    """The catalog as every API resolves model ids.

    Each entry claims its model id and its resource name (the alias). Entries are taken
    oldest first (`_age`); one claiming anything an older, accepted entry claims is
    refused, so the first entry to hold an id keeps it and a newer one cannot take it over.
    Claims of a refused entry count for nothing: an entry that clashes only with a refused
    one is accepted. Ids compare case-sensitively, as OpenAI's do."""

    entries: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Every entry, accepted or not, by resource name."""
    claims: Mapping[str, str] = field(default_factory=dict)
    """Every model id and resource name of an accepted entry -> that entry's resource name."""
    clashes: Mapping[str, Clash] = field(default_factory=dict)
    """Refused entries by resource name."""

    @classmethod
    def of(cls, basemodels: Iterable[Mapping[str, Any]]) -> ModelCatalog:
        entries: dict[str, Mapping[str, Any]] = {}
        claims: dict[str, str] = {}
        clashes: dict[str, Clash] = {}
        for basemodel in sorted(basemodels, key=_age):
            name = basemodel["metadata"]["name"]
            entries[name] = basemodel
            wanted = dict.fromkeys((model_id_of(basemodel), name))
            taken = next((claim for claim in wanted if claim in claims), None)
            if taken is not None:
                clashes[name] = Clash(holder=claims[taken], claim=taken)
                continue
            claims.update(dict.fromkeys(wanted, name))
        return cls(entries=entries, claims=claims, clashes=clashes)

    def resolve(self, requested: str) -> Mapping[str, Any] | None:
        """The accepted entry `requested` names, by model id or resource name; None for any
        other id, a refused entry's included."""
        name = self.claims.get(requested)
        return self.entries[name] if name is not None else None

    def accepted(self) -> list[Mapping[str, Any]]:
        """The entries users can call, oldest first."""
        return [entry for name, entry in self.entries.items() if name not in self.clashes]

    def knows(self, requested: str) -> bool:
        """Whether `requested` is an id or resource name of any entry, refused ones included."""
        return requested in self.claims or requested in self.entries

    def model_id(self, name: str) -> str:
        """The model id of the entry with resource name `name` (as FineTuningJobs and
        ModelDeployments reference it); `name` itself when no such entry exists (deleted)."""
        entry = self.entries.get(name)
        return model_id_of(entry) if entry is not None else name
