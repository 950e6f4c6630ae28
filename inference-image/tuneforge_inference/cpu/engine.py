"""The model side of the CPU engine: base model, tokenizer, adapters, one request at a time.

`Engine` turns a validated chat request into a `GenerationRequest` (on the event loop,
so parameter and context-length errors become a 400 before any streaming starts) and
runs it on the generation thread after pointing the model at the requested adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge_inference.cpu.adapters import AdapterSet
from tuneforge_inference.cpu.errors import bad_request, model_not_found
from tuneforge_inference.cpu.generation import Delta, GenerationRequest, GenerationResult, generate
from tuneforge_inference.cpu.protocol import ChatCompletionRequest
from tuneforge_inference.cpu.sampling import SamplingParams


class Engine:
    def __init__(
        self,
        model_dir: Path,
        served_model_name: str,
        *,
        max_adapters: int,
        max_adapter_rank: int,
        max_model_length: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.served_model_name = served_model_name
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        config_limit = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        self.max_model_length = min(max_model_length or config_limit, config_limit)
        self.eos_ids = self._eos_ids()
        self.adapters = AdapterSet(self.model, max_adapters, max_adapter_rank, cache_dir)

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    def resolve_model(self, name: str) -> str | None:
        """The adapter a model name selects (None: the base model); 404 when unknown."""
        if name == self.served_model_name:
            return None
        if name in self.adapters.known:
            return name
        raise model_not_found(name)

    def prompt_ids(self, request: ChatCompletionRequest) -> list[int]:
        if not self.tokenizer.chat_template:
            raise bad_request("the model has no chat template", "messages")
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def plan(self, request: ChatCompletionRequest) -> GenerationRequest:
        """Checks a request against the model and fixes its generation budget."""
        prompt = self.prompt_ids(request)
        room = self.max_model_length - len(prompt)
        if room < 1:
            raise bad_request(
                f"This model's maximum context length is {self.max_model_length} tokens; "
                f"the messages use {len(prompt)}.",
                "messages",
            )
        limit = request.output_limit()
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        if limit is not None and limit > room:
            raise bad_request(
                f"{param} is too large: {limit}. This model's maximum context length is "
                f"{self.max_model_length} tokens and the messages use {len(prompt)}.",
                param,
            )
        vocab = self.model.get_output_embeddings().weight.shape[0]
        bias = {int(token): value for token, value in (request.logit_bias or {}).items()}
        if any(not 0 <= token < vocab for token in bias):
            raise bad_request(f"logit_bias token ids must be in [0, {vocab})", "logit_bias")
        sampling = SamplingParams(
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            logit_bias=bias,
            min_tokens=request.min_tokens,
        )
        return GenerationRequest(
            prompt_ids=prompt,
            n=request.n,
            max_new_tokens=limit or room,
            sampling=sampling,
            stop=request.stop,
            seed=request.seed,
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs or 0,
            ignore_eos=request.ignore_eos,
        )

    def run(
        self,
        adapter: str | None,
        job: GenerationRequest,
        on_delta: Callable[[Delta], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> GenerationResult:
        """Generation-thread only."""
        self.adapters.activate(adapter)
        return generate(self.model, self.tokenizer, job, self.eos_ids, on_delta, cancelled)
