"""OpenAI's per-line result objects for batch output and error files.

Every line is `{id, custom_id, response, error}`: a request that got an HTTP answer has
`response = {status_code, request_id, body}` (2xx lines go to the output file, the rest to
the error file); a request that never got one (connection failures, timeouts, expiry) has
`response = null` and `error = {code, message}`. Users' tooling parses these files with
OpenAI's SDK types, so the shape is kept exactly.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """What happened to one request after all its retries.

    Either an HTTP answer (`status_code`, `request_id`, `body`) or a failure without one
    (`error_code`, `error_message`).
    """

    custom_id: str
    status_code: int | None = None
    request_id: str | None = None
    body: Any = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def new_line_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def render(outcome: Outcome) -> bytes:
    """The outcome as one newline-terminated JSON line (never containing another newline,
    which `json.dumps` guarantees by escaping newlines inside strings)."""
    if outcome.status_code is not None:
        response = {
            "status_code": outcome.status_code,
            "request_id": outcome.request_id,
            "body": outcome.body,
        }
        error = None
    else:
        response = None
        error = {"code": outcome.error_code, "message": outcome.error_message}
    line = {"id": new_line_id(), "custom_id": outcome.custom_id, "response": response, "error": error}
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def usage_of(body: Any) -> tuple[int, int, int]:
    """(input, output, total) tokens reported in a chat.completion body; zeros when absent."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0, 0
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    total = _int(usage.get("total_tokens")) or prompt + completion
    return prompt, completion, total


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
