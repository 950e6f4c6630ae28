"""The base model and its LoRA adapter.

Weights arrive through `tuneforge.weights.materialize_base_model`, which turns any catalog
URI (a HF directory on file://, pvc://, s3://, or a GGUF file) into a local safetensors
directory, dequantizing GGUF once and caching it. Here we load it in the precision the
hardware wants (bf16 on GPUs that support it, fp32 otherwise; 4-bit NF4 for QLoRA) and wrap
it with peft's LoRA.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge import weights
from tuneforge.contracts import LoraSettings

from tuneforge_trainer.errors import TrainerError, is_transient


@dataclass(frozen=True)
class Precision:
    """How the base weights are held and how the forward pass runs."""

    dtype: torch.dtype
    mixed_precision: str  # accelerate's value: "bf16", "fp16" or "no"


def choose_precision() -> Precision:
    """bf16 on CUDA devices that support it (half the memory, tensor cores, no loss
    scaling); fp16 on older GPUs, where accelerate adds a gradient scaler and peft keeps the
    adapter in fp32; fp32 on CPU, for exactness."""
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "bf16")
        return Precision(torch.float16, "fp16")
    return Precision(torch.float32, "no")


def choose_attention(requested: str) -> str:
    """transformers' attn_implementation for a setting. `auto` takes flash-attention 2 on
    a CUDA GPU when the flash-attn package is installed (packed rows become varlen kernels,
    no L x L mask), sdpa otherwise (packed rows get a block-diagonal mask)."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def fsdp_plugin():
    """accelerate's FSDP2: one shard group per decoder layer (the model's `_no_split_modules`),
    weights loaded by rank 0 alone and broadcast, full state dicts for checkpoints."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    # transformers reads these at from_pretrained: ranks other than 0 load on the meta device.
    os.environ["ACCELERATE_USE_FSDP"] = "true"
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "true"
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT",
        cpu_ram_efficient_loading=True,
    )


def materialize(uri: str) -> Path:
    try:
        return weights.materialize_base_model(uri)
    except Exception as exc:
        if is_transient(exc):
            raise  # a store outage, not a bad model: the Pod is retried
        raise TrainerError("model_load_failed", f"cannot load base model from {uri}: {exc}",
                           param="base_model_uri") from exc


def load_tokenizer(model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.is_fast:
        raise TrainerError("model_load_failed", "the base model needs a fast tokenizer (offset mapping "
                           "is how assistant tokens are located)", param="base_model_uri")
    if tokenizer.chat_template is None:
        raise TrainerError("model_load_failed", "the base model has no chat template", param="base_model_uri")
    return tokenizer


def quantization_config():
    """4-bit NF4 with double quantization and bf16 compute: the QLoRA recipe."""
    if not torch.cuda.is_available():
        raise TrainerError(
            "unsupported_hardware",
            "QLoRA (lora.quantize_4bit) needs a CUDA GPU: bitsandbytes 4-bit kernels do not run "
            "on CPU. Train with plain LoRA or schedule the job on a GPU node.",
            param="lora.quantize_4bit",
        )
    try:
        import bitsandbytes  # noqa: F401  (the config only fails later, at load, without it)
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise TrainerError("unsupported_hardware", "QLoRA needs the bitsandbytes package in the image",
                           param="lora.quantize_4bit") from exc
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_base(model_dir: Path, lora: LoraSettings, precision: Precision, *, device: torch.device,
              attention: str = "sdpa"):
    """The frozen base model, on the CPU (bitsandbytes places 4-bit weights on `device`
    itself); the loop moves or shards it."""
    kwargs: dict = {"dtype": precision.dtype, "attn_implementation": attention}
    if lora.quantize_4bit:
        kwargs["quantization_config"] = quantization_config()
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except ImportError as exc:
        raise TrainerError("unsupported_hardware", f"attention implementation {attention!r} is not available "
                           f"in this image: {exc}", param="hyperparameters.attention") from exc
    except (OSError, ValueError) as exc:
        raise TrainerError("model_load_failed", f"cannot load base model: {exc}", param="base_model_uri") from exc
    # Training never decodes, and a KV cache would also disable the packed-sequence mask.
    model.config.use_cache = False
    return model


def attach_lora(model, lora: LoraSettings, *, gradient_checkpointing: bool):
    """Wraps the base with a fresh LoRA adapter (all linear layers but the output head by
    default, which is what QLoRA showed matters for quality)."""
    # Non-reentrant checkpointing: works with frozen inputs (the embeddings are frozen),
    # under DDP's and FSDP's hooks, and without the reentrant variant's deprecation.
    if lora.quantize_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


@torch.no_grad()
def attention_honours_packing(model, vocab_size: int) -> bool:
    """Whether two examples packed in one row (position ids restarting) give the same
    logits as each alone. Checked empirically on the loaded model, since it depends on the
    architecture's modeling code and the attention implementation; when it fails the
    trainer pads instead of packing."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, vocab_size, (1, 5), generator=generator).to(device)
    b = torch.randint(0, vocab_size, (1, 7), generator=generator).to(device)
    alone = torch.cat([model(input_ids=a, use_cache=False).logits, model(input_ids=b, use_cache=False).logits], dim=1).float()
    positions = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0).to(device)
    packed = model(input_ids=torch.cat([a, b], dim=1), position_ids=positions, use_cache=False).logits.float()
    tolerance = 1e-3 if packed.dtype == torch.float32 and model.dtype == torch.float32 else 3e-2
    return bool(torch.allclose(packed, alone, atol=tolerance * alone.abs().max().item(), rtol=0))
