"""What the platform offers, as the management API shows it: the catalog models a job can
start from and the hardware profiles it can train on. Pure, so which BaseModels are
offered and each entry's defaults are tested on plain dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneforge.config import HardwareProfile
from tuneforge.gateway.management.protocol import BaseModelEntry, HardwareEntry


def is_offered_base_model(resource: Mapping[str, Any]) -> bool:
    """Fine-tunable and Ready: a job started from it can train now."""
    return resource["spec"].get("fineTunable", True) and (resource.get("status") or {}).get("phase") == "Ready"


def base_model_entry(resource: Mapping[str, Any]) -> BaseModelEntry:
    spec = resource["spec"]
    return BaseModelEntry(
        id=resource["metadata"]["name"],
        name=spec.get("displayName") or resource["metadata"]["name"],
        provider=spec.get("provider"),
        description=spec.get("description"),
        parameter_count=spec.get("parameterCount"),
        supported_tasks=spec.get("supportedTasks") or ["chat"],
        max_sequence_length=spec.get("maxContextLength", 2048),
        default_hardware=spec.get("defaultHardware"),
    )


def hardware_entry(profile: HardwareProfile, default: str | None) -> HardwareEntry:
    return HardwareEntry(
        id=profile.name,
        name=profile.display_name or profile.name,
        gpu_type=profile.gpu_type,
        gpu_count=profile.gpu_count,
        gpu_memory=profile.gpu_memory_gb,
        cpu=profile.cpu,
        memory=profile.memory,
        cost_per_hour=profile.cost_per_hour,
        currency=profile.currency,
        default=profile.name == default,
    )
