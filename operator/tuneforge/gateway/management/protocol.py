"""The management API's wire format, requests and responses, as pydantic models: one
place to read what dashboards send and get, and what makes the served OpenAPI document
precise about both.

Python names are snake_case; the wire is camelCase through aliases, in both directions.
Numbers that may come back from the API server as integers are `int | float`, so 2 is not
re-encoded as 2.0.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from tuneforge.api.v1alpha1.common import MAX_NODES
from tuneforge.contracts import BASE_LEARNING_RATE
from tuneforge.gateway.management.estimate import DEFAULT_EPOCHS

Number = int | float
JobStatus = Literal["queued", "running", "completed", "failed", "stopped"]
"""The five statuses dashboards filter on (management/job_status.py maps phases to them)."""
SortField = Literal["createdAt", "updatedAt", "name", "status"]

# -- requests ------------------------------------------------------------------------------


class CamelBody(BaseModel):
    """camelCase on the wire; unknown fields are refused, so a misspelt option is a 400
    instead of a silently ignored setting."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=False, extra="forbid")


class JobHyperparameters(CamelBody):
    epochs: int | None = Field(default=None, ge=1, le=50)
    """Passes over the training data; the trainer picks when omitted."""
    learning_rate: float | None = Field(default=None, gt=0, le=100 * BASE_LEARNING_RATE)
    """Absolute peak learning rate; stored as a multiplier of the LoRA base rate 2e-4."""
    batch_size: int | None = Field(default=None, ge=1, le=256)
    """Examples per optimizer step; the trainer picks when omitted."""
    warmup_steps: int | None = Field(default=None, ge=0, le=1_000_000)
    """Learning-rate warmup steps (capped at the run's steps); 3% of the steps when omitted."""


class JobHardware(CamelBody):
    profile: str | None = Field(default=None, min_length=1, max_length=63)
    """A profile from GET /hardware; defaults to the base model's, else the platform's."""
    gpu_count: int | None = Field(default=None, ge=0, le=64)
    """GPUs per Pod, overriding the profile's."""
    nodes: int | None = Field(default=None, ge=1, le=MAX_NODES)
    """Pods that train together; more than 1 needs a profile whose maxNodes allows it."""


class JobDistributed(CamelBody):
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """auto, ddp or fsdp (docs/trainer.md, sizing a job)."""
    processes_per_node: int | None = Field(default=None, ge=1, le=64)
    """Training processes per Pod; defaults to its GPU count (1 on CPU)."""


class JobCreate(CamelBody):
    name: str = Field(min_length=1, max_length=200)
    base_model: str = Field(min_length=1, max_length=253)
    training_dataset: str = Field(min_length=1, max_length=255)
    """A file id (purpose fine-tune) uploaded with POST /v1/files, or the file name it was
    uploaded under."""
    description: str | None = Field(default=None, max_length=2000)
    validation_file: str | None = Field(default=None, max_length=255)
    """A file id or file name, as trainingDataset."""
    hyperparameters: JobHyperparameters | None = None
    suffix: str | None = Field(default=None, max_length=40)
    hardware: JobHardware | None = None
    distributed: JobDistributed | None = None
    webhook_url: str | None = Field(default=None, max_length=2048)
    """Called with a signed training.completed / training.failed event when the job ends
    (docs/api.md, Webhooks); the create response carries the signing secret."""


class DeployRequest(CamelBody):
    dedicated: bool = False
    """Create a dedicated ModelDeployment even when the base model's shared one exists."""
    replicas: int = Field(default=1, ge=0, le=64)
    """Replicas of a dedicated deployment."""


class EstimateRequest(CamelBody):
    base_model: str = Field(min_length=1, max_length=253)
    dataset_size: Annotated[int | None, Field(strict=True, ge=1, le=10**10)] = None
    """Training examples (lines of the JSONL file). Their tokens are estimated from
    trainingFile when given, else from an average example (docs/management-api.md)."""
    dataset_tokens: Annotated[int | None, Field(strict=True, ge=1, le=10**13)] = None
    """Training tokens in one pass over the dataset, when known: used as given."""
    training_file: str | None = Field(default=None, min_length=1, max_length=255)
    """A fine-tuning upload (id or file name) whose examples are measured; its example
    count is the dataset size when datasetSize is omitted."""
    epochs: int = Field(default=DEFAULT_EPOCHS, ge=1, le=50)
    hardware_profile: str | None = Field(default=None, max_length=63)
    """A profile from GET /hardware; defaults to the base model's, else the platform's default."""


# -- responses -----------------------------------------------------------------------------


class CamelResponse(BaseModel):
    """Built with Python names, served with camelCase ones."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)


class JobError(CamelResponse):
    code: str
    message: str
    param: str | None = None


class JobProgress(CamelResponse):
    step: int | None
    total_steps: int | None


class JobSummary(CamelResponse):
    id: str
    name: str
    """spec.displayName, or the job id for jobs created without one (kubectl, OpenAI API)."""
    base_model: str
    status: JobStatus
    description: str | None
    owner: str | None
    """The name of the API key that created the job."""
    organization_id: str
    trained_tokens: int | None
    started_at: str | None
    finished_at: str | None
    created_at: str
    updated_at: str
    progress: JobProgress
    """Optimizer steps done and planned, from the controller's last report (a tuneforge
    extension: a list can show progress bars without fetching each job)."""


class JobHyperparametersView(CamelResponse):
    """What the job trains with: resolved values once the trainer reported them, else the
    requested ones; "auto" where the trainer still has to choose."""

    epochs: int | Literal["auto"]
    learning_rate: float | Literal["auto"]
    batch_size: int | Literal["auto"]
    warmup_steps: int | None
    warmup_ratio: Number | None


class JobMetricsSummary(CamelResponse):
    training_loss: Number | None
    validation_loss: Number | None
    epoch: Number | None


class JobDetail(JobSummary):
    training_dataset: str
    """The training file's id."""
    training_file: str | None
    """The name the training file was uploaded under."""
    validation_file: str | None
    """The name the validation file was uploaded under."""
    validation_dataset: str | None
    """The validation file's id."""
    suffix: str | None
    hyperparameters: JobHyperparametersView
    result_model: str | None
    error: JobError | None
    metrics: JobMetricsSummary
    restarts: int
    estimated_finish: str | None


class CreatedJob(JobDetail):
    webhook_secret: str | None = None
    """Only in the create response of a job with a webhookUrl: the key of its deliveries'
    HMAC-SHA256 signature (X-Tuneforge-Signature)."""


class StoppedJob(JobDetail):
    message: str


class RestartedJob(JobDetail):
    resume_from_step: int | None
    message: str
    """The step of the latest complete checkpoint training resumes from; null starts over."""


class JobList(CamelResponse):
    count: int
    """Jobs matching the filters, on all pages."""
    limit: int
    offset: int
    jobs: list[JobSummary]


class JobStats(CamelResponse):
    total: int
    queued: int
    running: int
    completed: int
    failed: int
    stopped: int


class DeploymentRef(CamelResponse):
    name: str
    namespace: str
    shared: bool
    phase: str


class DeployedJob(CamelResponse):
    id: str
    result_model: str
    status: Literal["deployed"] = "deployed"
    message: str
    loaded_on_demand: bool
    """True on a shared deployment, which loads the adapter with the first request."""
    deployment: DeploymentRef


class LogEntry(CamelResponse):
    timestamp: str | None
    level: Literal["debug", "info", "warning", "error"]
    message: str


class JobLogs(CamelResponse):
    job_id: str
    source: Literal["pod", "events"]
    pod: str | None
    logs: list[LogEntry]


class MetricsPoint(CamelResponse):
    step: int
    training_loss: Number | None
    validation_loss: Number | None
    learning_rate: Number | None
    tokens_per_second: Number | None
    """Example tokens trained per second over the step, all processes; null where the
    trainer's record has none."""


class JobMetricsValues(CamelResponse):
    training_loss: Number | None
    validation_loss: Number | None
    current_epoch: Number | None
    total_epochs: int | None
    trained_tokens: int | None
    steps: list[MetricsPoint]


class JobMetrics(CamelResponse):
    job_id: str
    metrics: JobMetricsValues


class BaseModelEntry(CamelResponse):
    id: str
    name: str
    provider: str | None
    description: str | None
    parameter_count: str | None
    """Human size as the catalog shows it: "135M", "8B"."""
    parameters: int | None
    """The exact parameter count."""
    supported_tasks: list[str]
    max_sequence_length: int | None
    default_hardware: str | None


class BaseModelList(CamelResponse):
    count: int
    models: list[BaseModelEntry]


class HardwareEntry(CamelResponse):
    id: str
    name: str
    gpu_type: str | None
    gpu_count: int
    gpu_memory: str | None
    """Memory per GPU as the catalog shows it: "80GB"."""
    gpu_memory_gb: float | None
    cpu: str | None
    memory: str | None
    cost_per_hour: float | None
    currency: str
    default: bool


class HardwareList(CamelResponse):
    count: int
    default: str | None
    hardware: list[HardwareEntry]


class CostEstimate(CamelResponse):
    estimated_cost: float | None
    """Null when the hardware profile has no costPerHour."""
    estimated_time_minutes: float
    currency: str
    base_model: str
    dataset_size: int | None
    """Examples; null when the request gave only datasetTokens."""
    dataset_tokens: int
    """Tokens in one pass over the dataset."""
    tokens_per_example: float | None
    tokens_basis: Literal["given", "training-file", "average-example"]
    """Where datasetTokens came from: the request, the named file's characters, or the
    documented average example."""
    epochs: int
    total_tokens: int
    hardware_profile: str
    throughput_tokens_per_second: float
    basis: Literal["calibrated-same-model", "calibrated-profile", "nominal"]
    calibration_jobs: int


class CallerKey(CamelResponse):
    name: str
    """The name of the key's Secret, which jobs it creates record as their owner."""
    tenant: str
    """The namespace the key acts in."""
    scopes: list[str]
    """Every scope the key holds, wildcards expanded, sorted."""


DeploymentPhase = Literal["Pending", "Deploying", "Ready", "Degraded", "Failed"]
"""A ModelDeployment's status.phase (docs/controllers.md); Pending before the controller wrote one."""


class DeploymentEntry(CamelResponse):
    name: str
    namespace: str
    shared: bool
    """A catalog model's deployment in the system namespace, serving every tenant (its base
    model, and the tenant's adapters on demand); false for the caller's own."""
    base_model: str
    """The model id of the base model served."""
    phase: DeploymentPhase
    replicas: int
    """Replicas wanted: spec.replicas, or with autoscaling the autoscaler's decision."""
    ready_replicas: int
    served_models: list[str]
    """The model names the deployment answers to: the base model and its preloaded adapters."""
    message: str | None
    """Why it is not Ready: the API server's refusal of its Pods (its PodsAdmitted
    condition) when there is one, else its Available condition's message; null when Ready."""
    created_at: str


class DeploymentList(CamelResponse):
    count: int
    deployments: list[DeploymentEntry]
