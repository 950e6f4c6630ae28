"""Process configuration, read once from the environment.

Every tuneforge process (operator, gateway, trainer, inference, batch runner, local stack)
reads the same `TUNEFORGE_*` variables, so one Helm value or one line of `.dev/env`
configures all of them the same way.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, SettingsConfigDict

from tuneforge.api.v1alpha1.common import MAX_NODES

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(k|Ki|Mi|Gi|Ti|M|G|T)?$"
"""A Kubernetes memory quantity such as 512Mi or 16Gi."""

DEFAULT_POD_MEMORY = "16Gi"
"""Memory of a trainer or serving Pod whose profile (or lack of one) names none: room for a
7B-class model's weights in host memory while they load, or vLLM's 4 GiB of CPU swap space
plus the server. Memory is both request and limit, so a Pod never counts on memory the
scheduler did not reserve for it; profiles of bigger models set their own figure."""


class HardwareProfile(BaseModel):
    """A kind of machine the platform team offers by name (Helm value `hardwareProfiles`).

    Jobs and deployments ask for a profile instead of repeating GPU types, node selectors
    and tolerations; the management API lists the profiles and prices work with
    `costPerHour`. Keys are camelCase, as in the Helm values they come from.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="What jobs name in hardware.profile.")
    display_name: str | None = Field(default=None, description="Human-readable name for dashboards.")
    gpu_type: str | None = Field(default=None, description="GPU product (node label nvidia.com/gpu.product).")
    gpu_count: int = Field(default=0, ge=0, le=64, description="GPUs per Pod; 0 runs on CPU.")
    gpu_memory_gb: float | None = Field(default=None, ge=0, description="Memory of one GPU, in GiB.")
    cpu: str | None = Field(default=None, description="CPU request per Pod (a Kubernetes quantity).")
    memory: str = Field(
        default=DEFAULT_POD_MEMORY,
        description="Memory request and limit per Pod (a Kubernetes quantity); it must leave room for "
        "sharedMemory, which counts against it.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the Pod must match.")
    tolerations: list[dict[str, str | int]] = Field(default_factory=list, description="core/v1 tolerations.")
    cost_per_hour: float | None = Field(default=None, ge=0, description="Price of one Pod-hour on this profile.")
    currency: str = Field(default="USD", description="Currency of cost_per_hour.")
    nodes: int = Field(
        default=1, ge=1, le=MAX_NODES,
        description="Pods a FineTuningJob on this profile trains on together unless it sets hardware.nodes.",
    )
    max_nodes: int = Field(
        default=1, ge=1, le=MAX_NODES,
        description="The most Pods one FineTuningJob may train on together; 1 offers single-Pod jobs only.",
    )
    shared_memory: str | None = Field(
        default=None, pattern=QUANTITY_PATTERN,
        description="Size of the memory-backed /dev/shm of trainer Pods that run several processes (a "
        "Kubernetes quantity); NCCL and data loader workers exchange data through it.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of every trainer Pod on this profile, e.g. NCCL_* settings for the "
        "cluster's network.",
    )

    @model_validator(mode="after")
    def _nodes_within_max(self) -> "HardwareProfile":
        if self.nodes > self.max_nodes:
            raise ValueError(f"nodes ({self.nodes}) must not exceed maxNodes ({self.max_nodes})")
        return self


class Settings(BaseSettings):
    """Settings shared by all tuneforge components."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="ignore")

    store_root: str = Field(
        default="file:///var/lib/tuneforge/store",
        description="Root URI of the artifact store (file://, s3://, or pvc://<claim>/<path>).",
    )
    pvc_mount_root: Path = Field(
        default=Path("/mnt/pvc"),
        description="Where PersistentVolumeClaims named in pvc:// URIs are mounted, one "
        "directory per claim. The local platform points this at a directory on disk.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "tuneforge",
        description="Local cache for materialised model weights.",
    )
    store_retry_attempts: int = Field(
        default=5, ge=1, le=20,
        description="Tries of one object-store request, the first included, before botocore gives "
        "up on a transient fault (5xx, throttling, reset connection, timeout) (its "
        "total_max_attempts); s3fs then repeats the whole cycle as often (its retries). 1 disables "
        "the client's retries.",
    )
    store_retry_mode: Literal["standard", "adaptive", "legacy"] = Field(
        default="standard",
        description="botocore's retry mode: exponential backoff with jitter ('standard'), plus "
        "client-side rate limiting after throttling ('adaptive').",
    )
    store_retry_deadline_s: float = Field(
        default=120.0, ge=0,
        description="How long an artifact-store operation keeps retrying, with backoff, a transient "
        "fault the client gave up on; a store outage shorter than this does not fail a job. 0 disables.",
    )
    system_namespace: str = Field(
        default="tuneforge-system",
        description="Namespace of the platform itself: API-key Secrets and the shared "
        "multi-LoRA ModelDeployments of the catalog models live here.",
    )
    gateway_internal_url: str = Field(
        default="http://tuneforge-gateway.tuneforge-system.svc:8000/v1",
        description="The gateway URL that batch runner Pods send their requests to.",
    )
    trainer_image: str = Field(default="ghcr.io/tuneforge/trainer:0.1.0")
    inference_image: str = Field(default="ghcr.io/tuneforge/inference:0.1.0")
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        description="Names of imagePullSecrets for the trainer, serving and batch runner Pods, as JSON; "
        "each must exist in every namespace those Pods run in.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None,
        description="imagePullPolicy of the trainer, serving and batch runner containers; unset leaves "
        "Kubernetes' default (Always for :latest, else IfNotPresent).",
    )
    workload_cache_size: str = Field(
        default="100Gi", pattern=QUANTITY_PATTERN,
        description="sizeLimit of the cache emptyDir of trainer, serving and batch runner Pods, where "
        "they keep weights copied from the store or dequantized from GGUF and the libraries' caches: "
        "the largest base model's weights must fit.",
    )
    batch_image: str = Field(
        default="ghcr.io/tuneforge/tuneforge:0.1.0",
        description="Image of the batch runner Pods: the slim control-plane image, since the runner "
        "only sends HTTP requests and writes files (no torch, no vLLM).",
    )
    serving_token: SecretStr | None = Field(
        default=None,
        description="A serving Pod's deployment token (tuneforge.serving_auth), from the Secret the "
        "operator makes: the CPU engine and the adapter loader require it as a bearer token.",
    )
    bind_host: str = Field(
        default="0.0.0.0",
        description="Address servers bind to. The local node agent sets it to the Pod's "
        "loopback address so several Pods can use the same port on one machine.",
    )
    hardware_profiles: list[HardwareProfile] = Field(
        default_factory=list,
        description="The hardware profiles on offer, as JSON (the chart renders them from its "
        "values into TUNEFORGE_HARDWARE_PROFILES).",
    )
    default_hardware_profile: str | None = Field(
        default=None,
        description="Profile used when neither the job nor its base model names one.",
    )
    termination_log: Path = Field(
        default=Path("/dev/termination-log"),
        description="Where images write their one-line JSON error on failure.",
    )


def find_hardware_profile(config: Settings, name: str) -> HardwareProfile | None:
    return next((p for p in config.hardware_profiles if p.name == name), None)


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide settings; tests call `settings.cache_clear()` after changing env."""
    return Settings()
