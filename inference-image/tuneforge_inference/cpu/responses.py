"""OpenAI response objects: `chat.completion`, `chat.completion.chunk` and SSE framing.

Streaming follows OpenAI's wire format: the first chunk of each choice carries the
assistant role, later chunks carry content deltas, the last one the finish_reason; with
`stream_options.include_usage` every chunk has `"usage": null` and one extra chunk with
no choices carries the usage; the stream ends with `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from tuneforge_inference.cpu.generation import Delta, GenerationResult

FINGERPRINT = "tuneforge-cpu"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


DONE = sse("[DONE]")


@dataclass
class Completion:
    """Identity shared by every object of one response."""

    model: str
    with_logprobs: bool
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _envelope(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": FINGERPRINT}

    def final(self, result: GenerationResult) -> dict:
        """The non-streaming `chat.completion`."""
        choices = [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text, "refusal": None, "tool_calls": []},
                "logprobs": {"content": [e.as_openai() for e in c.all_logprobs], "refusal": None}
                if self.with_logprobs
                else None,
                "finish_reason": c.finish_reason,
            }
            for c in result.choices
        ]
        return {
            **self._envelope("chat.completion"),
            "choices": choices,
            "usage": usage(result.prompt_tokens, result.completion_tokens),
        }

    def chunk(self, choices: list[dict], include_usage: bool) -> dict:
        body = {**self._envelope("chat.completion.chunk"), "choices": choices}
        if include_usage:
            body["usage"] = None
        return body

    def role_chunk(self, n: int, include_usage: bool) -> dict:
        return self.chunk(
            [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
             for i in range(n)],
            include_usage,
        )

    def delta_chunk(self, delta: Delta, include_usage: bool) -> dict:
        content = {"content": delta.text} if delta.text else {}
        logprobs = {"content": [e.as_openai() for e in delta.logprobs], "refusal": None} if self.with_logprobs else None
        return self.chunk(
            [{"index": delta.index, "delta": content, "logprobs": logprobs, "finish_reason": delta.finish_reason}],
            include_usage,
        )

    def usage_chunk(self, result: GenerationResult) -> dict:
        return {**self.chunk([], False), "usage": usage(result.prompt_tokens, result.completion_tokens)}
