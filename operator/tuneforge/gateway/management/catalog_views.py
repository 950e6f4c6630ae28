"""What the platform offers, as the management API shows it: the catalog models a job can
start from and the hardware profiles it can train on. Pure, so which BaseModels are
offered and each entry's defaults are tested on plain dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneforge.api.v1alpha1.basemodel import model_id_of
from tuneforge.config import HardwareProfile
from tuneforge.gateway.management.protocol import BaseModelEntry, HardwareEntry


def is_offered_base_model(resource: Mapping[str, Any]) -> bool:
    """Fine-tunable and Ready: a job started from it can train now."""
    return resource["spec"].get("fineTunable", True) and (resource.get("status") or {}).get("phase") == "Ready"


def human_count(count: int | None) -> str | None:
    """A parameter count as model catalogs write it: 8B, 1.7B, 135M, 70B (three
    significant digits at most, trailing zeros dropped). The unit is picked after rounding,
    so 999,999,999 is 1B rather than 1000M."""
    if count is None:
        return None
    for scale, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        rounded = float(f"{count / scale:.3g}")
        if rounded >= 1:
            return f"{rounded:g}{unit}"
    return str(count)


def gigabytes(value: float | None) -> str | None:
    """GPU memory as catalogs write it: 80GB, 40GB, 24GB."""
    return None if value is None else f"{value:g}GB"


def provider_of(spec: Mapping[str, Any], model_id: str) -> str | None:
    """spec.provider, else the organisation a Hugging Face style id names
    (`HuggingFaceTB/SmolLM2-135M-Instruct` is HuggingFaceTB's); null when neither says."""
    organisation, slash, _ = model_id.partition("/")
    return spec.get("provider") or (organisation if slash else None)


def base_model_entry(resource: Mapping[str, Any]) -> BaseModelEntry:
    spec = resource["spec"]
    model_id = model_id_of(resource)
    return BaseModelEntry(
        id=model_id,
        name=spec.get("displayName") or model_id,
        provider=provider_of(spec, model_id),
        description=spec.get("description"),
        parameter_count=human_count(spec.get("parameterCount")),
        parameters=spec.get("parameterCount"),
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
        gpu_memory=gigabytes(profile.gpu_memory_gb),
        gpu_memory_gb=profile.gpu_memory_gb,
        cpu=profile.cpu,
        memory=profile.memory,
        cost_per_hour=profile.cost_per_hour,
        currency=profile.currency,
        default=profile.name == default,
    )
