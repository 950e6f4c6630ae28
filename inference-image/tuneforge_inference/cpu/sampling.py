"""Next-token choice for a batch of `n` choices: OpenAI's sampling parameters on logits.

Order, as in OpenAI/vLLM: logit_bias and presence/frequency penalties shift the raw
logits; temperature scales them (0 means greedy); top_p keeps the smallest set of tokens
whose probability reaches p; one `torch.Generator` draws every choice, so a request with
a seed gives the same tokens on every run. Reported logprobs are of the raw model
distribution (vLLM's default `raw_logprobs` mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    min_tokens: int = 0


def adjust_logits(
    logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams, step: int, eos_ids: list[int]
) -> torch.Tensor:
    """Applies logit_bias, penalties and min_tokens to float logits of shape (n, vocab).

    `counts[i, t]` is how often choice i has generated token t so far (OpenAI's penalties
    look at generated tokens only).
    """
    adjusted = logits.float().clone()
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), dtype=torch.long)
        adjusted[:, ids] += torch.tensor(list(params.logit_bias.values()), dtype=adjusted.dtype)
    if params.frequency_penalty:
        adjusted -= params.frequency_penalty * counts
    if params.presence_penalty:
        adjusted -= params.presence_penalty * (counts > 0).to(adjusted.dtype)
    if step < params.min_tokens and eos_ids:
        adjusted[:, eos_ids] = float("-inf")
    return adjusted


def choose_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of `logits` (n, vocab)."""
    if params.temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep a token while the mass before it is still below top_p (so the top one stays).
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def make_generator(seed: int | None) -> torch.Generator:
    """A private RNG: seeded when the request has a seed, random otherwise."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
