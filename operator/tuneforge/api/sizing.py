"""How big a workload is: the hardware it gets from the platform's profiles and, for a
FineTuningJob, how many Pods and processes train and the limits the profiles set on them.

The gateway refuses an impossible job when it is created and the FineTuningJob controller
fails one applied with kubectl for the same reason; both call `size_training`, so they
report the same code, param and message. It lives on the ground floor because the two may
not import each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tuneforge.api.v1alpha1.basemodel import BaseModelSpec
from tuneforge.api.v1alpha1.common import ApiError, Hardware, ResourceList, Toleration
from tuneforge.api.v1alpha1.finetuningjob import DistributedStrategy, FineTuningJobSpec, Quantization
from tuneforge.config import HardwareProfile, Settings, find_hardware_profile


class SizingError(ValueError):
    """A request the platform's hardware cannot serve. `param` is the spec field's dotted
    snake_case path (hardware.nodes, distributed.processes_per_node); an API that spells
    fields otherwise translates it."""

    def __init__(self, code: str, param: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.message = message

    def api_error(self) -> ApiError:
        return ApiError(code=self.code, message=self.message, param=self.param)


class UnknownHardwareProfile(SizingError):
    """A job or deployment names a hardware profile the platform does not offer."""

    def __init__(self, name: str, offered: Iterable[str]) -> None:
        offered = sorted(offered)
        super().__init__(
            "invalid_hardware_profile",
            "hardware.profile",
            f"hardware profile {name!r} does not exist; offered: {', '.join(offered) if offered else 'none'}",
        )
        self.name = name


def profile_of(hardware: Hardware | None, settings: Settings) -> HardwareProfile | None:
    """The offered profile resolved hardware names, if it names one."""
    return find_hardware_profile(settings, hardware.profile) if hardware and hardware.profile else None


def resolve_hardware(requested: Hardware | None, fallback_profile: str | None, settings: Settings) -> Hardware | None:
    """The hardware a workload gets: the profile it names (else the base model's default
    profile, else the platform default) supplies every field; fields set on the request
    override it, node selectors merge and tolerations add up."""
    name = (requested.profile if requested else None) or fallback_profile or settings.default_hardware_profile
    if name is None:
        return requested
    profile = find_hardware_profile(settings, name)
    if profile is None:
        raise UnknownHardwareProfile(name, (p.name for p in settings.hardware_profiles))
    merged = _profile_hardware(profile)
    if requested is None:
        return merged
    own = requested.model_dump(exclude_none=True, exclude={"profile", "node_selector", "tolerations"})
    return merged.model_copy(update={
        **{key: getattr(requested, key) for key in own},
        "node_selector": {**(merged.node_selector or {}), **(requested.node_selector or {})} or None,
        "tolerations": [*(merged.tolerations or []), *(requested.tolerations or [])] or None,
    })


def _profile_hardware(profile: HardwareProfile) -> Hardware:
    requests = ResourceList(cpu=profile.cpu, memory=profile.memory) if profile.cpu or profile.memory else None
    return Hardware(
        profile=profile.name,
        gpu_count=profile.gpu_count,
        gpu_type=profile.gpu_type,
        nodes=profile.nodes,
        requests=requests,
        node_selector=dict(profile.node_selector) or None,
        tolerations=[Toleration.model_validate(t) for t in profile.tolerations] or None,
    )


def training_hardware(spec: FineTuningJobSpec, base: BaseModelSpec, settings: Settings) -> Hardware | None:
    """The job's own hardware, else the base model's serving hardware (which names the
    model's GPU needs), resolved against the hardware profiles; None means CPU."""
    return resolve_hardware(spec.hardware or base.serving.hardware, base.default_hardware, settings)


@dataclass(frozen=True)
class TrainingSize:
    """What a FineTuningJob trains on, once the checks passed."""

    hardware: Hardware | None
    """Per Pod, as resolved against the profiles; None means CPU with no requests."""
    profile: HardwareProfile | None
    """The profile the hardware came from, if any (GPU memory, /dev/shm, env)."""
    nodes: int
    processes_per_node: int

    @property
    def gpus_per_node(self) -> int:
        return (self.hardware.gpu_count or 0) if self.hardware else 0

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node


def size_training(spec: FineTuningJobSpec, base: BaseModelSpec, settings: Settings) -> TrainingSize:
    """Resolves and checks a job's hardware and processes; raises SizingError (an unknown
    profile included) for a request no offered hardware can serve."""
    hardware = training_hardware(spec, base, settings)
    profile = profile_of(hardware, settings)
    gpus = (hardware.gpu_count or 0) if hardware else 0
    nodes = (hardware.nodes or 1) if hardware else 1
    _check_gpus(gpus, settings.hardware_profiles)
    _check_nodes(nodes, profile, settings.hardware_profiles)
    processes = _processes_per_node(spec.distributed.processes_per_node, gpus)
    _check_strategy(spec)
    _check_adapter_rank(spec, base)
    return TrainingSize(hardware=hardware, profile=profile, nodes=nodes, processes_per_node=processes)


def _check_adapter_rank(spec: FineTuningJobSpec, base: BaseModelSpec) -> None:
    """An adapter must be servable by the deployment that will serve it: vLLM refuses to
    load a LoRA whose rank exceeds its `--max-lora-rank`, so without this check a job would
    succeed and its model fail on first use. The limit is the catalog model's serving
    `maxAdapterRank` (its shared deployment's, and the default of dedicated ones) rather
    than the largest rank training allows: vLLM reserves GPU memory for every adapter slot
    at the maximum rank, so raising the shared deployment's rank for rare large adapters
    would cost every request on it memory. A platform that wants larger ranks raises the
    catalog entry's limit."""
    rank, most = spec.method.lora.rank, base.serving.max_adapter_rank
    if rank > most:
        raise SizingError(
            "invalid_hyperparameters", "method.lora.rank",
            f"LoRA rank {rank} is larger than the {most} this base model's deployments serve "
            "(its catalog entry's serving.maxAdapterRank); the adapter could never be loaded",
        )


def _check_gpus(gpus: int, profiles: list[HardwareProfile]) -> None:
    """No Pod can get more GPUs than the biggest profile's machines hold. Without profiles
    the platform states no limit, so there is nothing to check against."""
    most = max((p.gpu_count for p in profiles), default=None)
    if most is not None and gpus > most:
        largest = ", ".join(sorted(p.name for p in profiles if p.gpu_count == most))
        raise SizingError(
            "invalid_hardware", "hardware.gpu_count",
            f"{gpus} GPUs per Pod is more than any hardware profile offers (the most is {most}, on {largest})",
        )


def _check_nodes(nodes: int, profile: HardwareProfile | None, profiles: list[HardwareProfile]) -> None:
    """Multi-node training needs a profile that offers it: the platform team knows which
    machines share a fast network, so maxNodes is theirs to set."""
    if nodes == 1:
        return
    if profile is None:
        multi = sorted(f"{p.name} (maxNodes {p.max_nodes})" for p in profiles if p.max_nodes > 1)
        raise SizingError(
            "invalid_hardware", "hardware.nodes",
            f"training on {nodes} nodes needs a hardware profile whose maxNodes allows it; "
            f"{'offered: ' + ', '.join(multi) if multi else 'no profile offers more than 1 node'}",
        )
    if nodes > profile.max_nodes:
        raise SizingError(
            "invalid_hardware", "hardware.nodes",
            f"training on {nodes} nodes exceeds maxNodes {profile.max_nodes} of hardware profile {profile.name!r}",
        )


def _processes_per_node(requested: int | None, gpus: int) -> int:
    """One process per GPU by default (one on CPU); each process drives one GPU, so more
    processes than GPUs would share a device."""
    if requested is None:
        return max(gpus, 1)
    if gpus and requested > gpus:
        raise SizingError(
            "invalid_distributed", "distributed.processes_per_node",
            f"{requested} processes per node exceed the {gpus} GPUs per Pod (each process drives one GPU)",
        )
    return requested


def _check_strategy(spec: FineTuningJobSpec) -> None:
    """FSDP cannot shard bitsandbytes' 4-bit weights, so QLoRA trains with ddp only."""
    quantized = spec.method.lora.quantization is Quantization.nf4
    if quantized and spec.distributed.strategy is DistributedStrategy.fsdp:
        raise SizingError(
            "unsupported_distributed_strategy", "distributed.strategy",
            "fsdp cannot shard a 4-bit (nf4, QLoRA) base model; use ddp or auto, or train without quantization",
        )


SERVING_RESERVE_BYTES_PER_GPU = 2 * 2**30
"""Kept free of weights and KV cache on each serving GPU: the CUDA context, CUDA graphs and
the activations vLLM profiles at start."""
CONTEXT_GRANULE = 256


def servable_context_length(parameter_count: int | None, max_context_length: int, *, gpu_memory_gb: float | None,
                            gpu_count: int, utilization: float) -> int:
    """The longest context (a multiple of CONTEXT_GRANULE, at most the model's own) whose
    KV cache fits the serving GPUs beside the bf16 weights; the model's own context when a
    size is unknown or there is no GPU (the CPU engine allocates per request).

    With only the parameter count known, the shape is the Llama-class estimate the
    training sizing uses (width h = (128 P / 12)^(1/3), depth L = h / 128) and the KV cache
    2 (K and V) x L x h x 2 bytes per token, i.e. without grouped-query attention: models
    with GQA need a quarter to an eighth of that, so the estimate errs towards a context
    that starts. A deployment or BaseModel that sets maxModelLength overrides it."""
    if not parameter_count or not gpu_memory_gb or gpu_count < 1:
        return max_context_length
    width = (128 * parameter_count / 12) ** (1 / 3)
    kv_bytes_per_token = 2 * (width / 128) * width * 2
    usable = gpu_count * (gpu_memory_gb * 2**30 * utilization - SERVING_RESERVE_BYTES_PER_GPU)
    tokens = int((usable - 2 * parameter_count) // kv_bytes_per_token)
    fitting = max(CONTEXT_GRANULE, tokens // CONTEXT_GRANULE * CONTEXT_GRANULE)
    return min(max_context_length, fitting)
