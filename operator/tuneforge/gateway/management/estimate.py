"""The cost and time estimate of a fine-tuning job, as a pure function (docs/management-api.md).

    tokens     = dataset tokens (one epoch) x epochs
    seconds    = tokens / throughput
    cost       = seconds / 3600 x costPerHour of the hardware profile

Throughput (trained tokens per second) comes from the best evidence there is, in order:

1. the caller's finished jobs of the same base model on the same hardware profile: the
   median of their trainedTokens / (finishedAt - startedAt). Their wall time includes
   loading the model and checkpointing, so the estimate does too;
2. the caller's finished jobs of other base models on that profile, turned into effective
   FLOP/s (tokens/s x 6 x their parameter count) and back into tokens/s for this model
   (effective FLOP/s / (6 x parameter count)): training costs about 6 FLOPs per parameter
   per token (forward 2, backward 4; LoRA skips most weight gradients, but activation
   recomputation and adapter overhead eat most of that saving);
3. nominal effective FLOP/s of the profile: 1e14 per GPU (a third of a current datacenter
   GPU's dense bf16 peak, a typical utilisation for LoRA) or 5e10 for a CPU-only profile.

The dataset's tokens are what the caller says (datasetTokens), else its examples
(datasetSize) times the tokens of an example: measured on the caller's file when one is
named (CHARS_PER_TOKEN characters per token of message text, plus TEMPLATE_TOKENS_PER_MESSAGE
for each message's chat-template markup), else AVERAGE_TOKENS_PER_EXAMPLE.

Paths 2 and 3 need the base model's parameterCount; without it and without finished jobs
of the same model there is nothing to estimate from, which is an error, not a guess.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tuneforge.config import HardwareProfile
from tuneforge.gateway.times import kube_time

FLOPS_PER_PARAMETER_TOKEN = 6.0
GPU_EFFECTIVE_FLOPS = 1.0e14
CPU_EFFECTIVE_FLOPS = 5.0e10
DEFAULT_EPOCHS = 3
"""Epochs assumed when the caller gives none: the trainer's "auto" default for datasets of
a few dozen to a few thousand examples."""


class EstimateError(ValueError):
    """Nothing to base an estimate on."""


CHARS_PER_TOKEN = 4.0
"""English text averages about four characters per token in current LLM tokenizers."""
TEMPLATE_TOKENS_PER_MESSAGE = 4
"""Role markers and separators a chat template adds around each message."""
AVERAGE_TOKENS_PER_EXAMPLE = 256
"""A short chat example (a system prompt, a question, an answer of a few sentences): the
assumption when the caller names no file. Name the training file, or give datasetTokens,
for an estimate of the real data."""


@dataclass(frozen=True)
class DatasetSize:
    examples: int | None
    tokens: int
    """Tokens in one pass over the dataset."""
    tokens_per_example: float | None
    basis: str
    """given, training-file or average-example."""


def dataset_size(*, examples: int | None, tokens: int | None, file_examples: int | None = None,
                 file_characters: int = 0, file_messages: int = 0) -> DatasetSize:
    """The dataset's tokens from the best of: the caller's count, the named file's text,
    the average example. The file's examples stand in for `examples` when it is omitted."""
    if tokens is not None:
        return DatasetSize(examples, tokens, tokens / examples if examples else None, "given")
    if file_examples:
        per_example = (file_characters / CHARS_PER_TOKEN + TEMPLATE_TOKENS_PER_MESSAGE * file_messages) / file_examples
        count = examples or file_examples
        return DatasetSize(count, math.ceil(count * per_example), round(per_example, 1), "training-file")
    if examples is None:
        raise EstimateError("The training file has no examples to measure.")
    return DatasetSize(examples, examples * AVERAGE_TOKENS_PER_EXAMPLE, AVERAGE_TOKENS_PER_EXAMPLE, "average-example")


@dataclass(frozen=True)
class Sample:
    """One finished job: how many tokens it trained in how much wall time."""

    base_model: str
    trained_tokens: int
    seconds: float
    parameter_count: int | None


@dataclass(frozen=True)
class Estimate:
    total_tokens: int
    tokens_per_second: float
    seconds: float
    cost: float | None
    currency: str
    basis: str
    """calibrated-same-model, calibrated-profile or nominal: which rule gave the throughput."""
    samples: int
    """Finished jobs the throughput was calibrated from."""

    def minutes(self) -> float:
        """Rounded up to a tenth of a minute: an estimate should not promise less."""
        return math.ceil(self.seconds / 6) / 10

    def rounded_cost(self) -> float | None:
        """Rounded up to a hundredth of the currency unit."""
        return None if self.cost is None else math.ceil(round(self.cost * 100, 6)) / 100


def nominal_flops(profile: HardwareProfile) -> float:
    return profile.gpu_count * GPU_EFFECTIVE_FLOPS if profile.gpu_count else CPU_EFFECTIVE_FLOPS


def estimate(*, base_model: str, parameter_count: int | None, dataset_tokens: int, epochs: int,
             profile: HardwareProfile, samples: Iterable[Sample]) -> Estimate:
    """The estimate for `dataset_tokens` x `epochs` of `base_model` on `profile`, calibrated
    from `samples` (finished jobs on that same profile)."""
    samples = [s for s in samples if s.trained_tokens > 0 and s.seconds > 0]
    same_model = [s.trained_tokens / s.seconds for s in samples if s.base_model == base_model]
    others = [s.trained_tokens / s.seconds * FLOPS_PER_PARAMETER_TOKEN * s.parameter_count
              for s in samples if s.base_model != base_model and s.parameter_count]
    if same_model:
        tokens_per_second, basis, used = statistics.median(same_model), "calibrated-same-model", len(same_model)
    elif parameter_count and others:
        flops = statistics.median(others)
        tokens_per_second = flops / (FLOPS_PER_PARAMETER_TOKEN * parameter_count)
        basis, used = "calibrated-profile", len(others)
    elif parameter_count:
        tokens_per_second = nominal_flops(profile) / (FLOPS_PER_PARAMETER_TOKEN * parameter_count)
        basis, used = "nominal", 0
    else:
        raise EstimateError(f"Model '{base_model}' has no parameterCount and no finished jobs on hardware profile "
                            f"'{profile.name}' to calibrate from.")
    total = dataset_tokens * epochs
    seconds = total / tokens_per_second
    cost = seconds / 3600 * profile.cost_per_hour if profile.cost_per_hour is not None else None
    return Estimate(total_tokens=total, tokens_per_second=tokens_per_second, seconds=seconds, cost=cost,
                    currency=profile.currency, basis=basis, samples=used)


def training_profile(job_spec: Mapping[str, Any], base_spec: Mapping[str, Any], default: str | None) -> str | None:
    """The hardware profile a job trained on, or None when it overrode the profile's GPUs
    (then its speed says nothing about the profile). Mirrors the controller's rule: the
    job's hardware, else the base model's serving hardware, names the profile; else the
    base model's default, else the platform's."""
    requested = job_spec.get("hardware") or (base_spec.get("serving") or {}).get("hardware") or {}
    if requested.get("gpuCount") is not None or requested.get("gpuType") is not None:
        return None
    return requested.get("profile") or base_spec.get("defaultHardware") or default


def calibration_samples(jobs: Iterable[Mapping[str, Any]], base_models: Mapping[str, Mapping[str, Any]], *,
                        profile: str, default: str | None) -> list[Sample]:
    """Samples from the succeeded jobs that trained on `profile` and report tokens and
    start and finish times."""
    samples = []
    for job in jobs:
        status = job.get("status") or {}
        base = base_models.get(job["spec"]["baseModel"])
        if status.get("phase") != "Succeeded" or not status.get("trainedTokens") or base is None:
            continue
        started, finished = kube_time(status.get("startedAt") or ""), kube_time(status.get("finishedAt") or "")
        if started is None or finished is None or training_profile(job["spec"], base["spec"], default) != profile:
            continue
        samples.append(Sample(base_model=job["spec"]["baseModel"], trained_tokens=int(status["trainedTokens"]),
                              seconds=(finished - started).total_seconds(),
                              parameter_count=base["spec"].get("parameterCount")))
    return samples


def estimate_profile(base_spec: Mapping[str, Any], default: str | None) -> str | None:
    """The profile a new job of this base model would train on when it names none."""
    return ((base_spec.get("serving") or {}).get("hardware") or {}).get("profile") or base_spec.get(
        "defaultHardware") or default
