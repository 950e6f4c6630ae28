"""Request bodies of the OpenAI API as pydantic models (they also make the served OpenAPI
document precise), plus the helpers every list and object shares: the list envelope with
cursor pagination and Unix-seconds timestamps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tuneforge.api.v1alpha1.common import MAX_NODES
from tuneforge.gateway.errors import bad_request

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]
"""OpenAI's metadata: up to 16 pairs, keys up to 64 and values up to 512 characters."""


class Request(BaseModel):
    """Unknown fields are ignored, as the OpenAI API does for fields it does not know."""

    model_config = ConfigDict(extra="ignore")


class Hyperparameters(Request):
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Literal["auto"] | Annotated[float, Field(gt=0, le=100)] = "auto"
    n_epochs: Literal["auto"] | Annotated[int, Field(ge=1, le=50)] = "auto"


class Supervised(Request):
    hyperparameters: Hyperparameters | None = None


class Method(Request):
    type: Literal["supervised"] = "supervised"
    """Only supervised fine-tuning (LoRA) is offered."""
    supervised: Supervised | None = None


class JobHardware(Request):
    """tuneforge extension (the openai client sends it with `extra_body`): what to train on."""

    profile: str | None = Field(default=None, min_length=1, max_length=63)
    """A hardware profile; defaults to the base model's, else the platform's."""
    gpu_count: int | None = Field(default=None, ge=0, le=64)
    """GPUs per Pod, overriding the profile's."""
    nodes: int | None = Field(default=None, ge=1, le=MAX_NODES)
    """Pods that train together; more than 1 needs a profile whose maxNodes allows it."""


class JobDistributed(Request):
    """tuneforge extension: how the training processes share the model."""

    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    processes_per_node: int | None = Field(default=None, ge=1, le=64)
    """Defaults to the GPUs per Pod (1 on CPU)."""


class FineTuningJobCreate(Request):
    model: str = Field(min_length=1, max_length=253)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    """Deprecated in the OpenAI API in favour of method.supervised.hyperparameters."""
    method: Method | None = None
    suffix: str | None = Field(default=None, max_length=40)
    nickname: str | None = Field(default=None, max_length=40)
    """Accepted as the suffix (the seeds' name for it)."""
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: Metadata | None = None
    integrations: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    """Not supported; only null or an empty list is accepted."""
    hardware: JobHardware | None = None
    distributed: JobDistributed | None = None


class BatchCreate(Request):
    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None


def unix(value: str | datetime | None) -> int | None:
    """An RFC 3339 timestamp (as the API server writes it) as Unix seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(value.timestamp())


def page(items: Sequence[dict], *, after: str | None, limit: int, ident: Callable[[dict], str] = lambda o: o["id"],
         after_param: str = "after") -> dict:
    """One page of an already ordered list: the items after the `after` id, at most `limit`.

    An `after` id that is not in the list is the caller's mistake (a stale or foreign
    cursor), reported as 400 rather than silently restarting from the top.
    """
    start = 0
    if after:
        for index, item in enumerate(items):
            if ident(item) == after:
                start = index + 1
                break
        else:
            raise bad_request(f"No object with id '{after}' to continue after.", param=after_param,
                              code="invalid_cursor")
    data = list(items[start : start + limit])
    return {
        "object": "list",
        "data": data,
        "has_more": start + limit < len(items),
        "first_id": ident(data[0]) if data else None,
        "last_id": ident(data[-1]) if data else None,
    }


Limit = Annotated[int, Field(ge=1, le=10_000)]
