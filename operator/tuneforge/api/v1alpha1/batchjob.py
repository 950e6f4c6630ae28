"""BatchJob: one OpenAI-style batch of chat-completion requests."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import Field

from tuneforge.api.v1alpha1.common import (
    FILE_REF_PATTERN,
    KUEUE_NAME_PATTERN,
    ApiModel,
    BatchError,
    Condition,
    CrdInfo,
    Resource,
    immutable,
)


class BatchEndpoint(str, Enum):
    chat_completions = "/v1/chat/completions"


class CompletionWindow(str, Enum):
    one_hour = "1h"
    three_hours = "3h"
    six_hours = "6h"
    twelve_hours = "12h"
    one_day = "24h"


class BatchJobSpec(ApiModel):
    """Desired state of a batch."""

    input_file: str = Field(pattern=FILE_REF_PATTERN, json_schema_extra=immutable("inputFile is immutable"))
    """The requests: a file id (file-...) uploaded with purpose batch, or an s3://,
    pvc:// or file:// URI of a JSONL file."""
    endpoint: BatchEndpoint = Field(default=BatchEndpoint.chat_completions, json_schema_extra=immutable("endpoint is immutable"))
    """The endpoint every request in the file targets."""
    completion_window: CompletionWindow = Field(default=CompletionWindow.one_day, json_schema_extra=immutable("completionWindow is immutable"))
    """Time allowed; unfinished requests then expire with partial results kept."""
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    """Up to 16 key-value pairs (the OpenAI metadata field)."""
    concurrency: int = Field(default=16, ge=1, le=1024)
    """Requests in flight at once."""
    cancel: bool = False
    """Cancel the batch; finished results are kept."""
    queue_name: str | None = Field(default=None, max_length=63, pattern=KUEUE_NAME_PATTERN)
    """Kueue LocalQueue to admit the batch runner through: its Job is created suspended and
    Kueue starts it when the queue's ClusterQueue has quota; the completion window runs
    meanwhile. Without it, a LocalQueue named `default` in the namespace still applies."""
    workload_priority_class: str | None = Field(default=None, max_length=63, pattern=KUEUE_NAME_PATTERN)
    """Kueue WorkloadPriorityClass of the batch runner."""


class BatchJobPhase(str, Enum):
    validating = "Validating"
    in_progress = "InProgress"
    finalizing = "Finalizing"
    completed = "Completed"
    failed = "Failed"
    expired = "Expired"
    cancelling = "Cancelling"
    cancelled = "Cancelled"


OPENAI_STATUS = {phase.value: phase.name for phase in BatchJobPhase}
"""Phase -> the OpenAI batch status string; shared by the controllers and the gateway."""

TERMINAL_PHASES = frozenset({BatchJobPhase.completed.value, BatchJobPhase.failed.value,
                             BatchJobPhase.expired.value, BatchJobPhase.cancelled.value})


class RequestCounts(ApiModel):
    """Requests by outcome."""

    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchUsage(ApiModel):
    """Tokens used by the batch."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class BatchJobStatus(ApiModel):
    """Observed state of a batch, with every field the OpenAI batch object needs."""

    phase: BatchJobPhase | None = None
    """Validating, InProgress, Finalizing, Completed, Failed, Expired, Cancelling or Cancelled."""
    conditions: list[Condition] = Field(default_factory=list)
    """Validated, Complete, KeyRevoked; PodsAdmitted (False while the API server refuses the
    runner's Pods, with its refusal as the message) once a refusal was seen."""
    observed_generation: int | None = None
    """The generation this status describes."""
    request_counts: RequestCounts | None = None
    usage: BatchUsage | None = None
    output_file: str | None = None
    """File id of the results (purpose batch_output)."""
    error_file: str | None = None
    """File id of the failed requests, when any failed."""
    errors: list[BatchError] = Field(default_factory=list, max_length=100)
    """Validation errors of the input file, or why the batch failed."""
    input_file_uri: str | None = None
    """The input file resolved to a store URI."""
    runner_job: str | None = None
    """Name of the batch/v1 Job running the batch runner."""
    finalizer_job: str | None = None
    """Name of the Job publishing the results of a batch whose runner could not finish it
    (out of retries, past its window or its cancel grace); set once that end is decided."""
    created_at: datetime | None = None
    in_progress_at: datetime | None = None
    expires_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    expired_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None


class BatchJobResource(Resource):
    """A BatchJob object."""

    crd = CrdInfo(
        kind="BatchJob",
        plural="batchjobs",
        short_names=["bjob"],
        scope="Namespaced",
        printer_columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Total", "type": "integer", "jsonPath": ".status.requestCounts.total"},
            {"name": "Completed", "type": "integer", "jsonPath": ".status.requestCounts.completed"},
            {"name": "Failed", "type": "integer", "jsonPath": ".status.requestCounts.failed"},
            {"name": "Window", "type": "string", "jsonPath": ".spec.completionWindow"},
            {"name": "Expires", "type": "date", "jsonPath": ".status.expiresAt", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )

    kind: str = "BatchJob"
    spec: BatchJobSpec
    status: BatchJobStatus | None = None
