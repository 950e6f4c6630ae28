"""FineTuningJob: one supervised LoRA / QLoRA fine-tuning run of a catalog model."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal, NamedTuple

from pydantic import ConfigDict, Field

from tuneforge.api.v1alpha1.common import (
    DNS_LABEL_PATTERN,
    FILE_REF_PATTERN,
    KUEUE_NAME_PATTERN,
    MAX_LABEL_LENGTH,
    ApiError,
    ApiModel,
    Condition,
    CrdInfo,
    Hardware,
    Resource,
    SecretKeyRef,
    immutable,
)

AUTO_INT_RULE = "type(self) == string ? self == 'auto' : self >= 1"


class Quantization(str, Enum):
    none = "none"
    nf4 = "nf4"


class LoraConfig(ApiModel):
    """LoRA adapter settings."""

    rank: int = Field(default=8, ge=1, le=256)
    """LoRA rank r."""
    alpha: int = Field(default=16, ge=1, le=1024)
    """LoRA scaling alpha (the update is scaled by alpha / rank)."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: list[str] | None = None
    """Module names to adapt; empty means every linear layer except the output head."""
    quantization: Quantization = Quantization.none
    """nf4 loads the base model in 4-bit (QLoRA); needs a GPU."""


class Method(ApiModel):
    """The fine-tuning method."""

    type: Literal["supervised"] = "supervised"
    """Only supervised fine-tuning is offered."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """Adapter settings."""


class Attention(str, Enum):
    auto = "auto"
    sdpa = "sdpa"
    flash_attention_2 = "flash_attention_2"
    flex_attention = "flex_attention"
    eager = "eager"


class Hyperparameters(ApiModel):
    """Training hyperparameters; each of the first three is a number or "auto"."""

    n_epochs: int | Literal["auto"] = Field(default="auto", json_schema_extra={
        "x-kubernetes-validations": [{"rule": AUTO_INT_RULE, "message": "nEpochs must be 'auto' or an integer >= 1"}]
    })
    """Passes over the training data; auto picks by dataset size (OpenAI's rule)."""
    batch_size: int | Literal["auto"] = Field(default="auto", json_schema_extra={
        "x-kubernetes-validations": [{"rule": AUTO_INT_RULE, "message": "batchSize must be 'auto' or an integer >= 1"}]
    })
    """Examples per optimizer step; auto is about 0.2% of the examples, 1 to 256."""
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    """Multiplier on the base learning rate (2e-4 for LoRA). A number or "auto" has no
    structural schema type, so CEL cannot check it; the controller does, before training."""
    warmup_ratio: float = Field(default=0.03, ge=0.0, le=0.5)
    """Fraction of steps spent warming the learning rate up."""
    warmup_steps: int | None = Field(default=None, ge=0, le=1_000_000)
    """Optimizer steps spent warming the learning rate up; when set it replaces
    warmupRatio (capped at the run's total steps)."""
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warmup."""
    max_seq_length: int = Field(default=2048, ge=16, le=131072)
    """Examples longer than this are truncated from the end."""
    seed: int = Field(default=42, ge=0)
    """Random seed; runs with the same seed on CPU are reproducible."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on long sequences."""
    micro_batch_size: int | None = Field(default=None, ge=1, le=1024)
    """Rows (packed examples) per forward pass; gradient accumulation makes up the rest of
    batchSize. Defaults to 1."""
    attention: Attention = Attention.auto
    """Attention implementation: auto takes flash_attention_2 when the trainer image has
    flash-attn and a CUDA GPU, sdpa otherwise."""


class DistributedStrategy(str, Enum):
    auto = "auto"
    ddp = "ddp"
    fsdp = "fsdp"


class Distributed(ApiModel):
    """How the training processes of a job share the work (docs/trainer.md, sizing a job)."""

    strategy: DistributedStrategy = DistributedStrategy.auto
    """ddp keeps a whole copy of the model in every process; fsdp shards the weights across
    all processes (FSDP2), for models that do not fit one GPU. auto picks fsdp when the base
    model's bf16 weights plus the activations of maxSeqLength tokens do not fit one GPU of the
    hardware profile, ddp otherwise. fsdp cannot shard a 4-bit (nf4) base model."""
    processes_per_node: int | None = Field(default=None, ge=1, le=64)
    """Training processes per Pod; defaults to the Pod's GPU count (1 on CPU). On GPUs it
    may not exceed the GPU count: each process drives one GPU."""
    max_group_restarts: int = Field(default=3, ge=0, le=100)
    """Multi-node jobs: how often the whole group of trainer Pods is replaced after one of
    them fails (the trainer resumes from its newest checkpoint) before the job fails.
    Replacements after a disruption (preemption, node drain) are not counted."""


class CheckpointPolicy(ApiModel):
    """How often to checkpoint, and how many to keep."""

    every_n_steps: int = Field(default=50, ge=1)
    """Steps between checkpoints (one is also taken at each epoch end)."""
    keep_last: int = Field(default=3, ge=1, le=100)
    """Checkpoints kept; older ones are deleted."""


class NotificationEvent(str, Enum):
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Notifications(ApiModel):
    """A webhook called when the job ends."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!(has(self.signingSecret) && has(self.signWithPlatformKey) && self.signWithPlatformKey)",
        "message": "set signingSecret or signWithPlatformKey, not both",
    }]})

    webhook_url: str = Field(pattern=r"^https?://.+", max_length=2048)
    """URL that receives a JSON POST."""
    signing_secret: SecretKeyRef | None = None
    """Secret key whose value signs the payload (X-Tuneforge-Signature: sha256=<HMAC>)."""
    sign_with_platform_key: bool = False
    """Sign with a secret the platform derives for this job from its platform key, so no
    Secret has to exist in the namespace: what the HTTP APIs set, whose create call hands
    the secret to the caller."""
    events: list[NotificationEvent] = Field(default_factory=lambda: [NotificationEvent.succeeded, NotificationEvent.failed])
    """Which endings to notify about."""


class FineTuningJobSpec(ApiModel):
    """Desired state of a fine-tuning job."""

    base_model: str = Field(pattern=DNS_LABEL_PATTERN, max_length=MAX_LABEL_LENGTH,
                            json_schema_extra=immutable("baseModel is immutable"))
    """Resource name of a BaseModel in the catalog (the APIs take its model id and write
    this name)."""
    training_file: str = Field(pattern=FILE_REF_PATTERN, json_schema_extra=immutable("trainingFile is immutable"))
    """Training data: a file id (file-...) uploaded through the gateway, or an s3://,
    pvc:// or file:// URI of a JSONL file."""
    validation_file: str | None = Field(default=None, pattern=FILE_REF_PATTERN)
    """Optional validation data, same forms as trainingFile."""
    method: Method = Field(default_factory=Method)
    """Fine-tuning method and adapter settings."""
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    """Training hyperparameters."""
    checkpoints: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    """Checkpoint policy."""
    suffix: str | None = Field(default=None, max_length=40, pattern=r"^[a-z0-9][a-z0-9-]*$")
    """Up to 40 characters added to the fine-tuned model id."""
    display_name: str | None = Field(default=None, max_length=200)
    """Human-friendly name."""
    description: str | None = Field(default=None, max_length=2000)
    """Free text describing the job."""
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    """Up to 16 key-value pairs (the OpenAI metadata field)."""
    hardware: Hardware | None = None
    """Hardware to train on; defaults to the base model's defaultHardware."""
    distributed: Distributed = Field(default_factory=Distributed)
    """How many processes train per Pod and how they share the model; the number of Pods
    is hardware.nodes."""
    suspend: bool = False
    """Pause: stop the trainer after its last checkpoint; set back to false to resume."""
    cancel: bool = False
    """Cancel the job. Final: a cancelled job cannot be resumed."""
    queue_name: str | None = Field(default=None, max_length=63, pattern=KUEUE_NAME_PATTERN)
    """Kueue LocalQueue to admit the trainer through: its Job is created suspended and Kueue
    starts it when the queue's ClusterQueue has quota, and may stop it again to preempt it.
    Without it, a LocalQueue named `default` in the namespace still applies (Kueue's
    default queue). Read when the trainer Job is created."""
    workload_priority_class: str | None = Field(default=None, max_length=63, pattern=KUEUE_NAME_PATTERN)
    """Kueue WorkloadPriorityClass of the trainer: its rank in the queue and which running
    jobs it may preempt."""
    notifications: Notifications | None = None
    """Webhook to call when the job ends."""
    merge_adapter: bool = False
    """Also write the base model merged with the adapter."""
    restart_count: int = Field(default=0, ge=0)
    """Restart requests: raising it above status.restarts while the job is Failed makes the
    controller replace the failed trainer, clear the error and queue the job again; the
    trainer resumes from its newest checkpoint. Ignored in other phases."""


class FineTuningJobPhase(str, Enum):
    validating_files = "ValidatingFiles"
    queued = "Queued"
    running = "Running"
    paused = "Paused"
    succeeded = "Succeeded"
    failed = "Failed"
    cancelled = "Cancelled"


OPENAI_STATUS = {phase.value: phase.name for phase in FineTuningJobPhase}
"""Phase -> the OpenAI fine_tuning.job status string; the one mapping both the
controllers and the gateway use (docs/architecture.md)."""

TERMINAL_PHASES = frozenset(
    {FineTuningJobPhase.succeeded.value, FineTuningJobPhase.failed.value, FineTuningJobPhase.cancelled.value}
)
"""Phases a job leaves only through a restart request (Failed) or never."""

FINE_TUNED_MODEL_PREFIX = "ft"
JOB_NAME_PREFIX = "ftjob-"


def fine_tuned_model_id(base_model: str, namespace: str, suffix: str | None, job: str) -> str:
    """OpenAI's shape `ft:<base>:<namespace>:<suffix>:<job-id>`, `base_model` being the base's
    model id (`basemodel.model_id_of`); the suffix segment is empty when none was given, so
    the id always has five parts and parses one way. Ids made before model ids existed
    carry the BaseModel's resource name there instead, and parse the same way (no part
    holds a ':')."""
    return f"{FINE_TUNED_MODEL_PREFIX}:{base_model}:{namespace}:{suffix or ''}:{job}"


class FineTunedModel(NamedTuple):
    """The parts of a fine-tuned model id."""

    base_model: str
    """The base's model id; its BaseModel resource name in ids made before model ids existed."""
    namespace: str
    suffix: str
    job: str


def parse_fine_tuned_model(model_id: str) -> FineTunedModel | None:
    """The parts of a fine-tuned model id, or None for any other id."""
    parts = model_id.split(":")
    if len(parts) == 5 and parts[0] == FINE_TUNED_MODEL_PREFIX and parts[4].startswith(JOB_NAME_PREFIX):
        return FineTunedModel(*parts[1:])
    return None


def job_of_fine_tuned_model(model_id: str) -> str | None:
    """The job id in a fine-tuned model id, or None for any other id."""
    parsed = parse_fine_tuned_model(model_id)
    return parsed.job if parsed else None


def restart_pending(spec: dict, status: dict) -> bool:
    """Whether a Failed job (wire dicts) has a restart request the controller has not acted
    on yet; cancel is final, so a cancelled job has none. The controller and the gateway
    must agree on it, so it lives here."""
    return (
        status.get("phase") == FineTuningJobPhase.failed.value
        and not spec.get("cancel")
        and int(spec.get("restartCount") or 0) > int(status.get("restarts") or 0)
    )


class TrainingProgressStatus(ApiModel):
    """How far training has come."""

    step: int = 0
    """Optimizer steps done."""
    total_steps: int = 0
    """Optimizer steps planned."""
    epoch: float = 0.0
    """Epochs done, fractional."""
    estimated_finish: datetime | None = None
    """Estimated finish time."""


class TrainingMetrics(ApiModel):
    """The latest training metrics."""

    train_loss: float | None = None
    valid_loss: float | None = None
    tokens_per_second: float | None = None


class CheckpointSummary(ApiModel):
    """Checkpoints taken so far."""

    count: int = 0
    latest_step: int | None = None
    latest_uri: str | None = None


class ResolvedHyperparameters(ApiModel):
    """Hyperparameters after "auto" was resolved by the trainer."""

    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None


class NotificationStatus(ApiModel):
    """Where the webhook delivery stands: retried with backoff across reconciles (never
    by sleeping inside one) until delivered, refused, or out of attempts."""

    attempts: int = Field(default=0, ge=0)
    """Deliveries tried."""
    next_attempt_at: datetime | None = None
    """Not before this time is the next one tried."""
    last_error: str | None = None
    """Why the last one failed."""


class FineTuningJobStatus(ApiModel):
    """Observed state of a fine-tuning job."""

    phase: FineTuningJobPhase | None = None
    """ValidatingFiles, Queued, Running, Paused, Succeeded, Failed or Cancelled."""
    conditions: list[Condition] = Field(default_factory=list)
    """Validated, Running, Succeeded, Paused, Notified; PodsAdmitted (False while the API
    server refuses the trainer's Pods, with its refusal as the message) once a refusal was seen."""
    observed_generation: int | None = None
    """The generation this status describes."""
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    trained_tokens: int | None = None
    """Tokens trained on, counted once even across restarts."""
    progress: TrainingProgressStatus | None = None
    metrics: TrainingMetrics | None = None
    fine_tuned_model: str | None = None
    """ft:<base model id>:<namespace>:<suffix>:<job-id>, set when the job succeeds."""
    adapter_uri: str | None = None
    """Where the trained adapter lives in the artifact store."""
    result_files: list[str] = Field(default_factory=list)
    """Where the trainer wrote its result files (results.csv, the metrics per step); the
    APIs show them as File ids (`file-results-<job>`)."""
    checkpoints: CheckpointSummary | None = None
    hyperparameters: ResolvedHyperparameters | None = None
    error: ApiError | None = None
    """Why the job failed."""
    trainer_job: str | None = None
    """Name of the batch/v1 Job running the trainer."""
    training_file_uri: str | None = None
    """The training file resolved to a store URI."""
    notification: NotificationStatus | None = None
    """Webhook deliveries tried so far, while they are being retried."""
    validation_file_uri: str | None = None
    restarts: int | None = None
    """The spec.restartCount the controller last acted on (restarts of a failed job)."""
    group_restarts: int | None = None
    """Times a multi-node trainer group was replaced after one of its Pods failed, counted
    against spec.distributed.maxGroupRestarts (replacements after a disruption are not)."""


class FineTuningJobResource(Resource):
    """A FineTuningJob object."""

    crd = CrdInfo(
        kind="FineTuningJob",
        plural="finetuningjobs",
        short_names=["ftjob"],
        scope="Namespaced",
        printer_columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel"},
            {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
            {"name": "Total", "type": "integer", "jsonPath": ".status.progress.totalSteps"},
            {"name": "Loss", "type": "number", "jsonPath": ".status.metrics.trainLoss"},
            {"name": "Model", "type": "string", "jsonPath": ".status.fineTunedModel"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )

    kind: str = "FineTuningJob"
    spec: FineTuningJobSpec
    status: FineTuningJobStatus | None = None
