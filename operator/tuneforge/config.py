"""Process configuration, read once from the environment.

Every tuneforge process (operator, gateway, trainer, inference, batch runner, local stack)
reads the same `TUNEFORGE_*` variables, so one Helm value or one line of `.dev/env`
configures all of them the same way.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    bind_host: str = Field(
        default="0.0.0.0",
        description="Address servers bind to. The local node agent sets it to the Pod's "
        "loopback address so several Pods can use the same port on one machine.",
    )
    termination_log: Path = Field(
        default=Path("/dev/termination-log"),
        description="Where images write their one-line JSON error on failure.",
    )


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide settings; tests call `settings.cache_clear()` after changing env."""
    return Settings()
