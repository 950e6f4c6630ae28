"""Shapes shared by all tuneforge kinds: conditions, errors, hardware, file references.

These pydantic models are the single source of truth for the CRDs: `tuneforge crds`
turns them into OpenAPI schemas, and attribute docstrings become `kubectl explain` text.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

PODS_ADMITTED = "PodsAdmitted"
"""The condition every kind with Pods carries while the API server refuses to create them
(False, with the refusal as its message), as the controllers record it."""

GROUP = "tuneforge.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

FILE_REF_PATTERN = r"^(file-[a-z0-9]{8,64}|(s3|pvc|file)://.+)$"
"""A file id uploaded through the gateway, or a URI in the artifact store."""

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

MAX_LABEL_LENGTH = 63
"""The most characters of a DNS label (RFC 1123, `DNS_LABEL_PATTERN`) and of a label value."""

SERVICE_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""An RFC 1035 label, what a Service's name must be (at most 63 characters): no dots, and a
letter first."""

KUEUE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
"""A Kueue LocalQueue or WorkloadPriorityClass name as a Job label value takes it (at most
63 characters)."""

MAX_NODES = 256
"""The most Pods one training group may span; trainer Job names leave room for the
`-<index>` of the Pod hostnames of an Indexed Job that large."""


class ApiModel(BaseModel):
    """Base for every schema: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="ignore",
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict as the API server stores it (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ConditionStatus(str, Enum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(ApiModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str
    """Condition type, e.g. Ready, Validated, Succeeded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    """A CamelCase, machine-readable reason for the last transition."""
    message: str = Field(default="", max_length=32768)
    """A human-readable explanation."""
    last_transition_time: datetime
    """When the status last changed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation this condition was computed from."""


class ApiError(ApiModel):
    """An error in the shape the OpenAI API reports it."""

    code: str
    """Machine-readable code, e.g. invalid_n_examples, invalid_file_format."""
    message: str
    """What went wrong, naming the field or line."""
    param: str | None = None
    """The parameter or field at fault, when there is one."""


class BatchError(ApiError):
    """One validation error of a batch input file."""

    line: int | None = Field(default=None, ge=1)
    """1-based line number in the input file."""


class SecretKeyRef(ApiModel):
    """A key in a Secret in the resource's own namespace."""

    name: str
    key: str


class Toleration(ApiModel):
    """A Pod toleration, as in core/v1."""

    key: str | None = None
    operator: str | None = Field(default=None, json_schema_extra={"enum": ["Exists", "Equal"]})
    value: str | None = None
    effect: str | None = Field(default=None, json_schema_extra={"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]})
    toleration_seconds: int | None = None


class ResourceList(ApiModel):
    """CPU and memory quantities, as in core/v1 (e.g. cpu: "4", memory: 16Gi)."""

    cpu: str | None = None
    memory: str | None = None
    ephemeral_storage: str | None = Field(default=None, alias="ephemeral-storage")


class Hardware(ApiModel):
    """Where and on what a workload runs.

    A named profile from the Helm values (GPU type and count, node selector, tolerations,
    cost per hour) supplies defaults; fields set here override the profile.
    """

    profile: str | None = None
    """Name of a hardware profile from the platform configuration."""
    gpu_count: int | None = Field(default=None, ge=0, le=64)
    """GPUs per Pod; 0 runs on CPU."""
    nodes: int | None = Field(default=None, ge=1, le=MAX_NODES)
    """FineTuningJobs: Pods (one per node) that train together, defaulting to the profile's
    nodes, else 1; more than 1 needs a profile whose maxNodes allows it. Serving ignores it."""
    gpu_type: str | None = None
    """GPU product, matched against the node label nvidia.com/gpu.product."""
    requests: ResourceList | None = None
    """CPU and memory requests."""
    limits: ResourceList | None = None
    """CPU and memory limits."""
    node_selector: dict[str, str] | None = None
    """Extra node labels the Pod must match."""
    tolerations: list[Toleration] | None = None
    """Extra tolerations, e.g. for tainted GPU nodes."""


class CrdInfo:
    """What the CRD generator needs beyond the schema: names, scope and columns."""

    def __init__(
        self,
        *,
        kind: str,
        plural: str,
        short_names: list[str],
        scope: str,
        printer_columns: list[dict[str, Any]],
    ) -> None:
        self.kind = kind
        self.plural = plural
        self.singular = kind.lower()
        self.short_names = short_names
        self.scope = scope
        self.printer_columns = printer_columns


class Resource(ApiModel):
    """A whole custom resource object: apiVersion, kind, metadata, spec, status."""

    crd: ClassVar[CrdInfo]

    api_version: str = API_VERSION
    kind: str
    metadata: dict[str, Any] = Field(default_factory=dict)


def immutable(message: str) -> dict[str, Any]:
    """Schema extra: a CEL transition rule that forbids changing a field once set."""
    return {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": message}]}
