"""The decode loop: `n` choices of one prompt generated together with a KV cache.

All choices share the prompt, so they run as one batch of identical rows without padding.
Text is detokenized from the whole output each step (BPE merges can change earlier
characters) and released to the caller only up to the point where it can no longer turn
into a stop sequence or end in half a UTF-8 character, so a streamed reply never shows
text the final answer takes back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tuneforge_inference.cpu.sampling import SamplingParams, adjust_logits, choose_tokens, make_generator


class Cancelled(Exception):
    """The client went away; the worker stops generating for it."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    n: int
    max_new_tokens: int
    sampling: SamplingParams
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]

    def as_openai(self) -> dict:
        def entry(token: str, logprob: float) -> dict:
            return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

        return {**entry(self.token, self.logprob), "top_logprobs": [entry(t, lp) for t, lp in self.top]}


@dataclass
class Delta:
    """New output of one choice since the previous delta."""

    index: int
    text: str
    logprobs: list[TokenLogprob]
    finish_reason: str | None


@dataclass
class ChoiceState:
    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    released: int = 0
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    all_logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    generated: int = 0
    finish_emitted: bool = False


@dataclass
class GenerationResult:
    choices: list[ChoiceState]
    prompt_tokens: int
    completion_tokens: int


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could still be the start of a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                longest = max(longest, size)
                break
    return longest


def _update_text(state: ChoiceState, tokenizer, stops: list[str]) -> None:
    """Re-detokenizes a choice and ends it at the first stop sequence."""
    text = tokenizer.decode(state.token_ids, skip_special_tokens=True)
    hits = [text.find(stop) for stop in stops if stop in text]
    if hits:
        state.text = text[: min(hits)]
        state.finish_reason = "stop"
    else:
        state.text = text


def _releasable(state: ChoiceState, stops: list[str]) -> int:
    if state.finish_reason is not None:
        return len(state.text)
    end = len(state.text) - _held_back(state.text, stops)
    while end > state.released and state.text[end - 1] == "\ufffd":
        end -= 1
    return max(end, state.released)


def _token_logprobs(tokenizer, log_probs: torch.Tensor, token_id: int, top_k: int) -> TokenLogprob:
    top: list[tuple[str, float]] = []
    if top_k:
        values, ids = log_probs.topk(top_k)
        top = [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids)]
    return TokenLogprob(tokenizer.decode([token_id]), float(log_probs[token_id]), top)


def generate(
    model,
    tokenizer,
    request: GenerationRequest,
    eos_ids: list[int],
    on_delta: Callable[[Delta], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> GenerationResult:
    """Runs the decode loop; `on_delta` receives releasable output after every step."""
    params = request.sampling
    rng = make_generator(request.seed)
    choices = [ChoiceState(index=i) for i in range(request.n)]
    vocab = model.get_output_embeddings().weight.shape[0]
    counts = torch.zeros((request.n, vocab))
    input_ids = torch.tensor([request.prompt_ids] * request.n, dtype=torch.long)
    past = None
    with torch.inference_mode():
        for step in range(request.max_new_tokens):
            if cancelled():
                raise Cancelled()
            output = model(input_ids=input_ids, past_key_values=past, use_cache=True)
            past = output.past_key_values
            logits = output.logits[:, -1, :]
            tokens = choose_tokens(adjust_logits(logits, counts, params, step, eos_ids), params, rng)
            raw_log_probs = torch.log_softmax(logits.float(), dim=-1) if request.logprobs else None
            for state, token in zip(choices, tokens.tolist()):
                if state.finish_reason is not None:
                    continue
                counts[state.index, token] += 1
                state.generated += 1
                if raw_log_probs is not None:
                    entry = _token_logprobs(tokenizer, raw_log_probs[state.index], token, request.top_logprobs)
                    state.pending_logprobs.append(entry)
                    state.all_logprobs.append(entry)
                if token in eos_ids and not request.ignore_eos:
                    state.finish_reason = "stop"
                    continue
                state.token_ids.append(token)
                _update_text(state, tokenizer, request.stop)
            if on_delta is not None:
                for state in choices:
                    _emit(state, request.stop, on_delta)
            if all(state.finish_reason is not None for state in choices):
                break
            input_ids = tokens.unsqueeze(-1)
    for state in choices:
        if state.finish_reason is None:
            state.finish_reason = "length"
            if on_delta is not None:
                _emit(state, request.stop, on_delta)
    return GenerationResult(choices, len(request.prompt_ids), sum(c.generated for c in choices))


def _emit(state: ChoiceState, stops: list[str], on_delta: Callable[[Delta], None]) -> None:
    if state.finish_emitted:
        return
    end = _releasable(state, stops)
    text = state.text[state.released : end]
    if not text and not state.pending_logprobs and state.finish_reason is None:
        return
    state.released = end
    on_delta(Delta(state.index, text, state.pending_logprobs, state.finish_reason))
    state.pending_logprobs = []
    if state.finish_reason is not None:
        state.finish_emitted = True
