"""BatchJobs as OpenAI `batch` objects. Pure, so the status mapping (a cancel request
shows at once) and the timestamp conversions are tested on plain dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneforge.api.v1alpha1 import batchjob
from tuneforge.gateway.openai_protocol import Batch, BatchError, BatchErrors, BatchRequestCounts, BatchUsage
from tuneforge.gateway.times import unix


def batch_status(resource: Mapping[str, Any]) -> str:
    """The OpenAI status of the controller's phase; a cancel request not acted on yet is
    `cancelling` at once."""
    phase = (resource.get("status") or {}).get("phase")
    if resource["spec"].get("cancel") and phase not in batchjob.TERMINAL_PHASES and phase != "Cancelling":
        return "cancelling"
    return batchjob.OPENAI_STATUS.get(phase, "validating")


def batch_object(resource: Mapping[str, Any]) -> Batch:
    meta, spec, status = resource["metadata"], resource["spec"], resource.get("status") or {}
    counts = status.get("requestCounts") or {}
    usage = status.get("usage")
    errors = status.get("errors") or []
    return Batch(
        id=meta["name"],
        endpoint=spec.get("endpoint", "/v1/chat/completions"),
        input_file_id=spec["inputFile"],
        completion_window=spec.get("completionWindow", "24h"),
        status=batch_status(resource),
        created_at=unix(status.get("createdAt") or meta["creationTimestamp"]),
        in_progress_at=unix(status.get("inProgressAt")),
        expires_at=unix(status.get("expiresAt")),
        finalizing_at=unix(status.get("finalizingAt")),
        completed_at=unix(status.get("completedAt")),
        failed_at=unix(status.get("failedAt")),
        expired_at=unix(status.get("expiredAt")),
        cancelling_at=unix(status.get("cancellingAt")),
        cancelled_at=unix(status.get("cancelledAt")),
        output_file_id=status.get("outputFile"),
        error_file_id=status.get("errorFile"),
        errors=BatchErrors(data=[
            BatchError(code=e.get("code"), message=e.get("message"), param=e.get("param"), line=e.get("line"))
            for e in errors
        ]) if errors else None,
        request_counts=BatchRequestCounts(**{key: counts.get(key, 0) for key in ("total", "completed", "failed")}),
        usage=BatchUsage(
            input_tokens=usage.get("inputTokens", 0),
            output_tokens=usage.get("outputTokens", 0),
            total_tokens=usage.get("totalTokens", 0),
        ) if usage else None,
        metadata=spec.get("metadata"),
    )
