"""Synthetic inputs for the GPU check: a randomly initialised model and chat data.

The GPU machine reaches no network, so nothing is downloaded: the model is built from a
config and the data is generated. Random weights cost the same FLOPs and memory as
trained ones, which is all a throughput check needs; the token lengths are what matter
for the data, so the examples have the shape of real chat fine-tuning sets (an optional
system prompt, one to three turns, answers longer than questions).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from tuneforge.weights import TINY_SHAPE

LLAMA_3_2_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}
"""Llama-3.2-1B's shape (1.24B parameters): big enough that the GPU, not Python, sets the pace."""

SMOKE_SHAPE = {
    **TINY_SHAPE,
    "max_position_embeddings": 2048,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}
"""The tests' tiny model shape, which trains in milliseconds on a CPU; its vocabulary is
the tokenizer's."""

WORDS = (
    "the model learns from examples that show what a good answer looks like and how long it "
    "should be when users ask about data pipelines training runs evaluation metrics cluster "
    "capacity budgets deadlines errors logs releases customers contracts invoices schedules "
    "please explain why this happens and what we should change first because the team needs "
    "a clear plan with steps owners risks and a short summary for the weekly review meeting "
    "however some requests are unusual so the assistant must check assumptions compare options "
    "estimate costs and recommend one path while noting tradeoffs limits and open questions"
).split()


def model_config(shape: dict, tokenizer) -> LlamaConfig:
    """A Llama config of `shape` whose special tokens are the tokenizer's (so padding and
    end-of-turn ids mean the same to both)."""
    settings = {"vocab_size": len(tokenizer), **shape}
    return LlamaConfig(
        **settings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def parameter_count(config: LlamaConfig) -> dict[str, int]:
    """Parameters by role, from the config alone (no model needed): the decoder layers'
    projections, the (tied) embedding/output head, and the total."""
    d, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    q_width = config.num_attention_heads * config.head_dim
    kv_width = config.num_key_value_heads * config.head_dim
    per_layer = d * q_width + 2 * d * kv_width + q_width * d + 3 * d * inter + 2 * d
    blocks = layers * per_layer
    embedding = config.vocab_size * d
    head = 0 if config.tie_word_embeddings else embedding
    return {"blocks": blocks, "embedding": embedding, "total": blocks + embedding + head + d}


def lora_parameter_count(config: LlamaConfig, rank: int) -> int:
    """Adapter parameters of LoRA on every linear layer but the output head (the trainer's
    default `all-linear`): rank * (in + out) per projection."""
    d, inter = config.hidden_size, config.intermediate_size
    q_width = config.num_attention_heads * config.head_dim
    kv_width = config.num_key_value_heads * config.head_dim
    shapes = [(d, q_width), (d, kv_width), (d, kv_width), (q_width, d), (d, inter), (d, inter), (inter, d)]
    return config.num_hidden_layers * rank * sum(i + o for i, o in shapes)


def build_model(dest: Path, config: LlamaConfig, tokenizer, *, dtype: torch.dtype, device: torch.device) -> None:
    """Initialises the model on `device` (seconds on a GPU, where a CPU would take a minute
    for 1.2B parameters) and saves it as safetensors with the tokenizer and chat template."""
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(max(n_words, 1))]
    return " ".join(words).capitalize() + "."


def _text(rng: random.Random, n_words: int) -> str:
    """Prose of about `n_words` words in sentences of 6 to 20 words."""
    sentences, left = [], n_words
    while left > 0:
        length = min(left, rng.randint(6, 20))
        sentences.append(_sentence(rng, length))
        left -= length
    return " ".join(sentences)


def chat_example(rng: random.Random, words: int) -> dict:
    """One conversation of about `words` words: a system prompt half the time, then one to
    three user/assistant turns where answers take about three quarters of the words."""
    messages = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": _text(rng, rng.randint(10, 40))})
    turns = rng.randint(1, 3)
    per_turn = max(words // turns, 8)
    for _ in range(turns):
        asked = max(per_turn // 4, 3)
        messages.append({"role": "user", "content": _text(rng, asked)})
        messages.append({"role": "assistant", "content": _text(rng, per_turn - asked)})
    return {"messages": messages}


def write_chat_jsonl(path: Path, n_examples: int, *, min_words: int, max_words: int, seed: int = 0) -> Path:
    """`n_examples` conversations with log-uniform lengths between min_words and max_words
    (many short examples, a tail of long ones, as in real chat data)."""
    rng = random.Random(seed)
    low, high = math.log(min_words), math.log(max_words)
    with open(path, "w") as handle:
        for _ in range(n_examples):
            words = int(math.exp(rng.uniform(low, high)))
            handle.write(json.dumps(chat_example(rng, words)) + "\n")
    return path
