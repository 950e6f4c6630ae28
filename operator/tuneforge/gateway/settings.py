"""Gateway-only settings (`TUNEFORGE_GATEWAY_*`), next to the shared `tuneforge.config`.

They live here rather than in the shared Settings because only the gateway reads them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_GATEWAY_", extra="ignore")

    max_upload_bytes: int = Field(default=6 * 1024**3, ge=1)
    """Largest file accepted by POST /v1/files, the limit of batch input files; larger
    uploads get 413. 6 GiB, the batch input size the reference API allows: uploads stream
    to the store with flat memory, and the batch runner streams its input, so this bounds
    store use and upload time, not memory."""
    max_fine_tune_upload_bytes: int = Field(default=512 * 1024**2, ge=1)
    """Largest training or validation file (purpose `fine-tune`), when below
    `max_upload_bytes`. The trainer holds a whole training set tokenized in memory in
    every process (about twice the file's size at 8 bytes a token), so this keeps a
    training Pod's memory bounded; 512 MiB is also OpenAI's limit per file."""
    key_cache_seconds: float = Field(default=5.0, ge=0)
    """How long a key lookup is used as is; for as long again it is used while being
    reloaded, so a revoked key stops working within twice this time."""
    route_cache_seconds: float = Field(default=2.0, ge=0)
    """How long the ready Pods of a deployment are used as is for routing chat requests
    (and for as long again while being reloaded)."""
    catalog_cache_seconds: float = Field(default=5.0, ge=0)
    """How long the model catalog (the BaseModels) is used as is to resolve and show model
    ids (and for as long again while being reloaded); an id it lacks is looked up afresh,
    so a new entry is usable at once and a deleted one goes within twice this time."""
    list_cache_max_objects: int = Field(default=50_000, ge=0)
    """Most FineTuningJobs and BatchJobs the watches serving list requests hold on a
    replica, over all tenants (about 6 KB of memory each; see gateway.listing). A
    namespace holding more is listed from the API server; 0 turns the cache off."""
    list_cache_idle_seconds: float = Field(default=600.0, gt=0)
    """A namespace's watch stops when none of its lists came for this long."""
    routing: Literal["adapter-aware", "round-robin"] = "adapter-aware"
    """How a chat request picks among a deployment's ready replicas: adapter-aware prefers
    a replica holding the requested adapter, then the least loaded (see gateway.routing);
    round-robin ignores both."""
    replica_saturation: int = Field(default=8, ge=1)
    """Requests in flight on a replica beyond which a hot adapter spreads to another
    replica, for deployments without autoscaling (theirs is targetInFlight)."""
    scale_up_timeout_seconds: float = Field(default=600.0, gt=0)
    """How long a request for an autoscaled deployment without a ready replica waits for
    one before 503 with Retry-After; room for a serving Pod to be scheduled and load weights."""
    held_requests_per_deployment: int = Field(default=1000, ge=1)
    """Requests one deployment may have waiting for a replica on a gateway replica; more
    get 503 with Retry-After at once."""
    upstream_timeout_seconds: float = Field(default=600.0, gt=0)
    """Read timeout towards the serving Pods (long generations)."""
    port: int = Field(default=8000, ge=1, le=65535)
    metrics_port: int = Field(default=9091, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint; 0 disables it."""

    def upload_limit(self, purpose: str) -> int:
        """The largest upload accepted for `purpose` (`fine-tune` or `batch`)."""
        if purpose == "fine-tune":
            return min(self.max_fine_tune_upload_bytes, self.max_upload_bytes)
        return self.max_upload_bytes


@lru_cache(maxsize=1)
def gateway_settings() -> GatewaySettings:
    """Process-wide gateway settings; tests call `gateway_settings.cache_clear()`."""
    return GatewaySettings()
