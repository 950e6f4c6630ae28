"""LoRA adapters made with peft at test time, for the inference tests and benchmark."""

from __future__ import annotations

from pathlib import Path

import torch


def make_adapter(base_dir: Path, dest: Path, seed: int, rank: int = 8) -> Path:
    """A LoRA adapter with random, non-zero A and B matrices.

    peft initialises B to zero (an untrained adapter changes nothing); random weights on
    both make each adapter steer the tiny model differently, so a test can tell which
    adapter answered.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "o_proj"])
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_" in name:
                weight.normal_(0.0, 0.3, generator=generator)
    peft_model.save_pretrained(dest)
    return dest
