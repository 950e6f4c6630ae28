"""Request bodies the CPU engine accepts, validated into OpenAI-style 400 errors.

Ranges follow OpenAI's API reference (temperature 0..2, penalties -2..2, logit_bias
-100..100, top_logprobs 0..20, at most 4 stop sequences); null means the default for every
parameter, as OpenAI documents them nullable. Unknown fields are ignored, as vLLM does, so clients that
send newer OpenAI parameters still get an answer. `ignore_eos` and `min_tokens` are vLLM's
extra sampling parameters, accepted so callers can ask for a fixed output length.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneforge_inference.cpu.errors import APIError, bad_request

MAX_STOP_SEQUENCES = 4


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message text; content parts other than text are rejected."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.get("type") != "text":
                raise bad_request(f"content part type {part.get('type')!r} is not supported", "messages")
            texts.append(str(part.get("text", "")))
        return "".join(texts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = Field(default=None, validate_default=True)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=128)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """OpenAI documents most parameters as nullable, null meaning "the default", and
        clients send explicit nulls (vLLM takes them the same way)."""
        return {key: value for key, value in data.items() if value is not None} if isinstance(data, dict) else data

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if any(stop == "" for stop in stops):
            raise ValueError("stop sequences must not be empty")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {token!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias}")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def output_limit(self) -> int | None:
        """max_completion_tokens (the current name) wins over the deprecated max_tokens."""
        return self.max_completion_tokens or self.max_tokens


# Cross-field rules name the field a client has to change.
_CROSS_FIELD_PARAMS = {"top_logprobs requires": "top_logprobs", "stream_options is only": "stream_options"}


def _param_of(error: dict) -> str | None:
    location = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
    if location:
        return ".".join(location)
    message = str(error.get("msg", ""))
    return next((param for prefix, param in _CROSS_FIELD_PARAMS.items() if prefix in message), None)


def parse_request(model_cls: type[BaseModel], body: Any) -> Any:
    """Validates a JSON body; the first problem becomes a 400 naming its parameter."""
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param_of(first)
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        raise APIError(400, f"{param}: {message}" if param else message, param=param) from exc


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's body for /v1/load_lora_adapter (lora_name, lora_path, load_inplace)."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str = ""
    lora_path: str = ""
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    """vLLM's body for /v1/unload_lora_adapter (lora_name; lora_int_id is accepted and unused)."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str = ""
    lora_int_id: int | None = None
