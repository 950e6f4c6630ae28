"""Run specs the controllers hand to the images, and the reports the images write back.

The controller renders a spec into a ConfigMap mounted at `/etc/tuneforge/run.json`; the
image takes `--run /etc/tuneforge/run.json`. The images know nothing of Kubernetes: these
models are their whole interface to the platform, so they are versioned with care (add
optional fields; never repurpose one).
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RUN_FILE = "/etc/tuneforge/run.json"


class Contract(BaseModel):
    """Strict base: an unknown field in a run spec is a bug on one side, never ignored."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def load(cls, path: str | Path) -> "Contract":
        return cls.model_validate_json(Path(path).read_text())

    def dump(self) -> str:
        return self.model_dump_json(indent=1)


class Report(BaseModel):
    """Lenient base for reports: a newer image may add fields an older reader ignores."""

    model_config = ConfigDict(extra="ignore")


# -- errors ------------------------------------------------------------------------------


class ErrorInfo(Report):
    """One error in OpenAI's shape; also the one-line termination message of an image."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


# -- training ----------------------------------------------------------------------------


class LoraSettings(Contract):
    rank: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    quantize_4bit: bool = Field(default=False, description="QLoRA: load the base in 4-bit.")


BASE_LEARNING_RATE = 2e-4
"""The LoRA learning rate a learning_rate_multiplier of 1 means; the trainer applies it and
the management API converts absolute learning rates with it."""


class TrainingHyperparameters(Contract):
    """Hyperparameters as the user gave them; `auto` is resolved by the trainer, which
    alone knows the dataset size (the resolved values go into result.json)."""

    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    warmup_ratio: float = Field(default=0.03, ge=0.0, le=0.5)
    warmup_steps: int | None = Field(default=None, ge=0, description="Replaces warmup_ratio when set.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = "linear"
    max_seq_length: int = Field(default=2048, ge=16)
    seed: int = 42
    gradient_checkpointing: bool = False
    micro_batch_size: int | None = Field(
        default=None, ge=1, description="Rows per forward pass; gradient accumulation makes up the rest."
    )
    attention: Literal["auto", "sdpa", "flash_attention_2", "flex_attention", "eager"] = Field(
        default="auto",
        description="transformers' attn_implementation; auto takes flash_attention_2 when the flash-attn "
        "package and a CUDA GPU are there (packed rows without an L x L mask), sdpa otherwise.",
    )


class CheckpointSettings(Contract):
    every_n_steps: int = Field(default=50, ge=1)
    keep_last: int = Field(default=3, ge=1)


RENDEZVOUS_PORT = 29400
"""Where node 0 of a multi-node run serves the c10d rendezvous (torchrun's default)."""


class DistributedSettings(Contract):
    """How many processes train, and how they share the model. The controller resolves
    `auto` before it writes the run: the trainer only ever sees ddp or fsdp."""

    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp", description="ddp replicates the model per process; fsdp shards it (FSDP2)."
    )
    nodes: int = Field(default=1, ge=1, description="Pods of the group (an Indexed Job when > 1).")
    processes_per_node: int = Field(default=1, ge=1, description="Processes per Pod, one per GPU.")
    rendezvous_host: str | None = Field(
        default=None, description="Host of node 0 (`<job>-0.<service>`); required when nodes > 1."
    )
    rendezvous_port: int = Field(default=RENDEZVOUS_PORT, ge=1, le=65535)

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node


class TrainerExit(int, Enum):
    """Exit statuses of `tuneforge-train` and `tuneforge-batch`, which the Jobs'
    podFailurePolicy reads: bad data or configuration fail the job at once; anything a new
    Pod may not meet again (a preemption, a store outage outlasting the retries, an NCCL
    timeout, a CUDA error or out-of-memory) is retried within the Job's backoffLimit, from
    the newest checkpoint or the batch's journal."""

    succeeded = 0
    fatal = 1  # bad data, bad run spec, unsupported request: retrying cannot help
    usage = 2  # argparse's own exit status for a bad command line
    retryable = 75  # EX_TEMPFAIL: a transient fault
    preempted = 143  # 128 + SIGTERM: stopped on request after a last checkpoint


class TrainingRun(Contract):
    """Everything one fine-tuning run needs."""

    job_id: str
    namespace: str
    base_model: str = Field(description="Catalog name of the base model.")
    base_model_uri: str = Field(description="Where the weights live (file://, pvc://, s3://, gguf://).")
    training_file: str = Field(description="URI of the training JSONL.")
    validation_file: str | None = None
    output_uri: str = Field(description="The job's directory in the artifact store.")
    fine_tuned_model: str = Field(description="The model id the adapter will be served as.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    hyperparameters: TrainingHyperparameters = Field(default_factory=TrainingHyperparameters)
    checkpoints: CheckpointSettings = Field(default_factory=CheckpointSettings)
    merge_adapter: bool = Field(default=False, description="Also write a merged full model.")
    distributed: DistributedSettings = Field(default_factory=DistributedSettings)


class TrainingProgress(Report):
    """`progress.json`, rewritten atomically by the trainer at a bounded rate."""

    status: Literal["validating_files", "running", "succeeded", "failed"] = "running"
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    trained_tokens: int = 0
    train_loss: float | None = None
    valid_loss: float | None = None
    tokens_per_second: float | None = None
    estimated_finish: datetime | None = None
    updated_at: datetime | None = None


class TrainingPerformance(Report):
    """How fast the run trained, measured over optimizer steps only (evaluation,
    checkpoints and uploads excluded)."""

    tokens_per_second: float = Field(description="Example tokens trained per second, all processes.")
    flops_per_token: float = Field(description="Model FLOPs per trained token (see docs/trainer.md).")
    mfu: float | None = Field(default=None, description="Model FLOPs utilisation against the GPUs' bf16 peak.")
    peak_memory_bytes: int | None = Field(default=None, description="Peak accelerator memory of one process.")
    attention: str = Field(description="The attention implementation the model ran with.")
    packed: bool = Field(description="Whether examples were packed into shared rows.")
    world_size: int = 1
    strategy: str = "ddp"


class TrainingResult(Report):
    """`result.json`, written once when the trainer exits successfully."""

    fine_tuned_model: str
    adapter_uri: str
    trained_tokens: int
    steps: int
    epochs: int
    hyperparameters: dict[str, float | int | str]
    result_files: list[str] = Field(default_factory=list, description="URIs, e.g. the results CSV.")
    merged_model_uri: str | None = None
    performance: TrainingPerformance | None = None


# -- serving -----------------------------------------------------------------------------


class Engine(str, Enum):
    vllm = "vllm"
    cpu = "cpu"


class AdapterSource(Contract):
    name: str = Field(description="The model name clients use for this adapter.")
    uri: str


class ServingSpec(Contract):
    """One base model and its LoRA adapters behind an OpenAI-compatible server."""

    deployment: str
    namespace: str
    served_model_name: str = Field(description="The name clients use for the base model: its model id.")
    base_model: str | None = Field(
        default=None,
        description="The BaseModel's resource name, which fine-tuned ids made before model ids existed carry "
                    "instead of the model id; their adapters still load here.",
    )
    base_model_uri: str
    engine: Engine = Engine.cpu
    adapters: list[AdapterSource] = Field(default_factory=list)
    max_adapters: int = Field(default=8, ge=1)
    max_adapter_rank: int = Field(default=64, ge=1)
    max_model_length: int | None = Field(default=None, ge=16)
    gpu_count: int = Field(default=0, ge=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    port: int = Field(default=8000, ge=1, le=65535)
    adapter_loader_port: int = Field(
        default=8001, ge=1, le=65535,
        description="The adapter-loader sidecar's port: runtime adapter loads, authenticated and checked.",
    )
    max_queue: int = Field(default=64, ge=1, description="CPU engine: waiting requests before 429.")
    engine_args: list[str] = Field(default_factory=list, description="Passed through to the engine.")


# -- batches -----------------------------------------------------------------------------


class BatchRun(Contract):
    """One OpenAI-style batch for the batch runner."""

    batch_id: str
    namespace: str
    input_uri: str
    endpoint: Literal["/v1/chat/completions"] = "/v1/chat/completions"
    output_uri: str = Field(description="The batch's directory in the artifact store.")
    store_root: str = Field(description="Store root, where output files are registered as Files.")
    target_base_url: str = Field(description="OpenAI-compatible base URL ending in /v1.")
    api_key_env: str = Field(default="TUNEFORGE_BATCH_API_KEY", description="Env var holding the key.")
    expires_at: datetime
    served_models: list[str] | None = Field(
        default=None, description="Models the target serves; None skips that check."
    )
    output_file_id: str
    error_file_id: str
    concurrency: int = Field(default=16, ge=1, le=1024)
    max_retries: int = Field(default=5, ge=0)
    request_timeout_s: float = Field(default=600.0, gt=0)
    cancel_grace_s: float = Field(default=30.0, ge=0)
    journal_snapshot_s: float = Field(
        default=30.0, gt=0,
        description="How often the runner copies its journal to an object store, so a new Pod "
        "resumes the batch instead of starting over (ignored on local stores).",
    )


BATCH_CANCEL_MARKER = "cancel"
"""Object in the batch's directory: the user cancelled; the runner stops dispatching,
finishes what is in flight and finalizes partial results."""
BATCH_FINALIZE_MARKER = "finalize"
"""Object in the batch's directory holding a `BatchFinalize`: the batch ends without its
runner finishing it, and the runner Pod started next only finalizes."""


class BatchFinalize(Contract):
    """The controller's decision to end a batch whose runner cannot finish it: retries
    exhausted, the runner gone past the completion window or the cancel grace. The
    controller writes it before it starts a runner Pod that sends nothing, publishes what
    the journal holds (every finished request) and ends the batch in `status`. Requests
    without a result get one error line each, code `batch_failed` or `batch_expired` with
    a message quoting `error` (failed, expired), or are left out (cancelled, as OpenAI
    does); a failed batch also reports `error` in `progress.errors`. A journal whose end was already
    decided (say `completed`, killed while publishing) keeps that end: nothing is failed
    that finished.

    Such a run needs no API key, and it may be killed at any point and run again: every
    request still ends in exactly one line. An input the runner never finished validating
    is validated first, so that `request_counts.total` counts it; an invalid one ends the
    batch `failed` with its validation error, as any run would have."""

    status: Literal["failed", "expired", "cancelled"]
    error: ErrorInfo


class RequestCounts(Report):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Usage(Report):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class BatchProgress(Report):
    """`progress.json` of a batch, rewritten atomically by the runner."""

    status: Literal[
        "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"
    ] = "validating"
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    usage: Usage = Field(default_factory=Usage)
    errors: list[ErrorInfo] = Field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    updated_at: datetime | None = None
    # When each status was entered, as the OpenAI Batch object reports them; only the runner
    # knows these moments, so it records them here for the gateway.
    in_progress_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    expired_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None
