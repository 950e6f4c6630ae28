"""The OpenAI API's wire format, requests and responses, as pydantic models: one place to
read what the gateway accepts and returns, and what makes the served OpenAPI document
precise about both.

Response fields keep the types of the values the resources hold: a number that may come
back from the API server as an integer is `int | float`, so 2 is not re-encoded as 2.0.
A chat completion request is checked here (`ChatCompletionRequest`) but goes to the engine
untouched, and its response comes back untouched.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from tuneforge.api.v1alpha1.common import MAX_NODES

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]
"""OpenAI's metadata: up to 16 pairs, keys up to 64 and values up to 512 characters."""

Limit = Annotated[int, Field(ge=1, le=100)]
"""`limit` of the batch, fine-tuning job, event and checkpoint lists: 1 to 100, as the
reference documents them."""
FileLimit = Annotated[int, Field(ge=1, le=10_000)]
"""`limit` of the file list: 1 to 10,000 (default 10,000), as OpenAI documents it."""
Number = int | float
UnixTime = int
"""Seconds since the epoch: every OpenAI timestamp."""

# -- requests ------------------------------------------------------------------------------


class RequestBody(BaseModel):
    """Unknown fields are ignored, as the OpenAI API does for fields it does not know."""

    model_config = ConfigDict(extra="ignore")


class Hyperparameters(RequestBody):
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Literal["auto"] | Annotated[float, Field(gt=0, le=100)] = "auto"
    n_epochs: Literal["auto"] | Annotated[int, Field(ge=1, le=50)] = "auto"


class Supervised(RequestBody):
    hyperparameters: Hyperparameters | None = None


class Method(RequestBody):
    type: Literal["supervised"] = "supervised"
    """Only supervised fine-tuning (LoRA) is offered."""
    supervised: Supervised | None = None


class JobHardware(RequestBody):
    """tuneforge extension (the openai client sends it with `extra_body`): what to train on."""

    profile: str | None = Field(default=None, min_length=1, max_length=63)
    """A hardware profile; defaults to the base model's, else the platform's."""
    gpu_count: int | None = Field(default=None, ge=0, le=64)
    """GPUs per Pod, overriding the profile's."""
    nodes: int | None = Field(default=None, ge=1, le=MAX_NODES)
    """Pods that train together; more than 1 needs a profile whose maxNodes allows it."""


class JobDistributed(RequestBody):
    """tuneforge extension: how the training processes share the model."""

    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    processes_per_node: int | None = Field(default=None, ge=1, le=64)
    """Defaults to the GPUs per Pod (1 on CPU)."""


class FineTuningJobCreate(RequestBody):
    model: str = Field(min_length=1, max_length=253)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    """Deprecated in the OpenAI API in favour of method.supervised.hyperparameters."""
    method: Method | None = None
    suffix: str | None = Field(default=None, max_length=40)
    nickname: str | None = Field(default=None, max_length=40)
    """Accepted as the suffix (the name the reference documents use for it)."""
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: Metadata | None = None
    integrations: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    """Not supported; only null or an empty list is accepted."""
    hardware: JobHardware | None = None
    distributed: JobDistributed | None = None
    webhook_url: str | None = None
    """tuneforge extension (the openai client sends it with `extra_body`): a URL POSTed a
    signed `training.completed` / `training.failed` event when the job ends. An extension
    field rather than `integrations`, whose entries OpenAI defines as typed third-party
    integrations (wandb) with their own settings, which a webhook is not."""


class BatchCreate(RequestBody):
    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None


# The gateway checks a chat request against this model and then forwards the body byte for
# byte, so vLLM and the CPU engine answer a bad parameter alike, and what vLLM would let
# through (a logit_bias beyond +-100, which it clamps) is refused as OpenAI refuses it.
# Nulls are forwarded as sent: vLLM 0.33 reads every one of them as its default
# (tests/unit/inference/test_vllm_contract.py), and so does the CPU engine.
MAX_STOP_SEQUENCES = 4
TokenId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]
Bias = Annotated[float, Field(ge=-100, le=100)]


class ChatCompletionRequest(BaseModel):
    """A chat completion request: the parameters of the reference API (and OpenAI's `n`,
    `max_tokens` and `stream_options`) with their documented types and ranges, strictly
    typed as OpenAI's are (`"0.7"` is not a number); `null` means a parameter's default.
    Other fields (`tools`, `response_format`, the engine's own sampling parameters) go to
    the engine, which judges them."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[TokenId, Bias] | None = None
    """Token id -> bias from -100 to 100."""
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    """Only with `logprobs: true`."""
    max_completion_tokens: int | None = None
    max_tokens: int | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    """Up to 4 sequences."""
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    """Above 0 (both engines refuse 0), up to 1."""

    @field_validator("stop", mode="before")
    @classmethod
    def _at_most_four_stops(cls, value: Any) -> Any:
        """Counted before the union is tried, so the error says what is wrong rather than
        that a list is not a string."""
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise PydanticCustomError("too_many_stop_sequences", "at most {most} sequences, not {count}",
                                      {"most": MAX_STOP_SEQUENCES, "count": len(value)})
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _logprobs_on(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise PydanticCustomError("logprobs_required", "requires logprobs to be true")
        return value


# -- lists ---------------------------------------------------------------------------------

Item = TypeVar("Item")


class CursorPage(BaseModel, Generic[Item]):
    """A page of a list paged with `after` cursors (files, jobs, events, checkpoints, batches)."""

    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool
    first_id: str | None
    last_id: str | None


# -- files ---------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: UnixTime
    filename: str
    purpose: str
    status: str
    """processed, or error when the upload failed validation."""
    status_details: str | None = None
    expires_at: UnixTime | None = None


class DeletedFile(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# -- fine-tuning ---------------------------------------------------------------------------


class FineTuningJobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJobHyperparameters(BaseModel):
    """The trainer's resolved values once it reported them, else the requested ones."""

    n_epochs: int | Literal["auto"]
    batch_size: int | Literal["auto"]
    learning_rate_multiplier: Number | Literal["auto"]


class SupervisedMethod(BaseModel):
    hyperparameters: FineTuningJobHyperparameters


class FineTuningJobMethod(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedMethod


class FineTuningJob(BaseModel):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    created_at: UnixTime
    model: str
    organization_id: str
    status: str
    fine_tuned_model: str | None
    finished_at: UnixTime | None
    error: FineTuningJobError | None
    hyperparameters: FineTuningJobHyperparameters
    method: FineTuningJobMethod
    result_files: list[str]
    seed: int
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: UnixTime | None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None
    user_provided_suffix: str | None


class CreatedFineTuningJob(FineTuningJob):
    webhook_secret: str | None = None
    """tuneforge extension, in the create response only: the key of the HMAC-SHA256
    signature (X-Tuneforge-Signature) of the job's webhook deliveries."""


class FineTuningJobEvent(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: UnixTime
    level: str
    message: str
    type: str
    data: dict[str, Any]


class FineTuningJobCheckpoint(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: UnixTime
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Number]
    """`step` and those of the trainer's metrics the step recorded; the others are absent."""


# -- batches -------------------------------------------------------------------------------


class BatchError(BaseModel):
    code: str | None
    message: str | None
    param: str | None
    line: int | None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()


class Batch(BaseModel):
    object: Literal["batch"] = "batch"
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: UnixTime
    in_progress_at: UnixTime | None
    expires_at: UnixTime | None
    finalizing_at: UnixTime | None
    completed_at: UnixTime | None
    failed_at: UnixTime | None
    expired_at: UnixTime | None
    cancelling_at: UnixTime | None
    cancelled_at: UnixTime | None
    output_file_id: str | None
    error_file_id: str | None
    errors: BatchErrors | None
    request_counts: BatchRequestCounts
    usage: BatchUsage | None
    metadata: dict[str, str] | None


# -- models --------------------------------------------------------------------------------


class BaseModelObject(BaseModel):
    """A catalog BaseModel."""

    id: str
    object: Literal["model"] = "model"
    created: UnixTime
    owned_by: str
    fine_tunable: bool
    max_context_length: int | None
    kind: Literal["base"] = "base"


class FineTunedModelObject(BaseModel):
    """The model a succeeded FineTuningJob of the caller produced."""

    id: str
    object: Literal["model"] = "model"
    created: UnixTime
    owned_by: str
    parent: str
    fine_tuning_job: str
    kind: Literal["fine-tuned"] = "fine-tuned"


class DeployedModelObject(BaseModel):
    """A model one of the caller's ModelDeployments serves."""

    id: str
    object: Literal["model"] = "model"
    created: UnixTime
    owned_by: str
    parent: str
    deployment: str
    kind: Literal["deployed"] = "deployed"


ModelObject = Annotated[BaseModelObject | FineTunedModelObject | DeployedModelObject, Field(discriminator="kind")]


class ModelList(BaseModel):
    """Not paged: the whole list at once, as OpenAI's /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelObject]


class DeletedModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
