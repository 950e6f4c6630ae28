"""Throughput figures: model FLOPs per trained token, and the GPUs' bf16 peak.

FLOPs per token count what the model must compute, not what a kernel happens to do:
- the frozen body (every parameter except the input embedding and the output head):
  2N forward and 2N backward for the activation gradients; frozen weights get no weight
  gradient, so LoRA training costs 4N, not the 6N of full fine-tuning (the adapter's
  own FLOPs are negligible at the ranks LoRA uses);
- attention: per layer and token 4·d·c forward (QKᵀ and AV over a causal context of c,
  on average half the example) and twice that backward, so 6·d·L per layer with L the
  token-weighted mean example length (packed examples attend only within themselves);
- the output head runs only at target positions (see `objective`) and is left out, as is
  the recomputation that gradient checkpointing adds: MFU here is a lower bound.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

PEAK_ENV = "TUNEFORGE_GPU_PEAK_TFLOPS"
BF16_DENSE_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.4),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
)
"""Dense bf16 tensor-core peaks from the vendor's data sheets, matched in order against
the device name (so "H100 PCIe" is tried before "H100")."""


def body_parameters(model) -> int:
    """Parameters of the transformer body: all but the input embedding and output head.
    bitsandbytes packs two 4-bit weights per stored element, so those count twice."""
    excluded = {id(p) for module in (model.get_input_embeddings(), model.get_output_embeddings())
                if module is not None for p in module.parameters()}
    return sum(p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)
               for p in model.parameters() if id(p) not in excluded)


def attention_width(config) -> int:
    """Width of the query projection (heads x head size), which may differ from the hidden size."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads * head_dim


def mean_context(lengths: Sequence[int]) -> float:
    """Token-weighted mean example length: the context an average trained token sits in."""
    total = sum(lengths)
    return sum(n * n for n in lengths) / total if total else 0.0


def flops_per_token(body_params: int, n_layers: int, attention_width: int, mean_length: float) -> float:
    return 4.0 * body_params + 6.0 * n_layers * attention_width * mean_length


def gpu_peak_flops() -> float | None:
    """bf16 peak of one GPU in FLOP/s: from TUNEFORGE_GPU_PEAK_TFLOPS, else the table; None
    on CPU or an unknown GPU (no MFU is reported then rather than a made-up one)."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV]) * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for marker, tflops in BF16_DENSE_TFLOPS:
        if marker in name:
            return tflops * 1e12
    return None
