"""The webhook a FineTuningJob calls when it ends: the event, and one delivery attempt.

The event is named as the platform API documents them (`training.completed`,
`training.failed`, `training.cancelled`) and signed (tuneforge.webhook_signing), so a
receiver can check it came from this operator. One reconcile makes at most one attempt;
the controller keeps the count and the time of the next one in the job's status, so a
receiver that is down costs no handler thread a sleep, and an operator restarted between
attempts goes on where it stopped. What may pass is retried (no answer, a 5xx, 408, 429);
any other 4xx ends it at once: the receiver has refused the event and will refuse it again.
"""

from __future__ import annotations

from datetime import timedelta
from enum import Enum
from typing import Any, NamedTuple

import httpx

from tuneforge.api.v1alpha1 import FineTuningJobResource
from tuneforge.controllers.status import FINE_TUNING_OPENAI_STATUS, parse_timestamp, utcnow

EVENT_TYPES = {"succeeded": "training.completed", "failed": "training.failed", "cancelled": "training.cancelled"}
"""The event type of each ending, by the job's OpenAI status."""
RETRY_CAP = timedelta(minutes=10)


class Outcome(str, Enum):
    delivered = "delivered"
    retry = "retry"
    refused = "refused"


class Attempt(NamedTuple):
    outcome: Outcome
    message: str
    """The receiver's answer, or why there was none."""


def payload(ft: FineTuningJobResource, status: dict[str, Any]) -> dict[str, Any]:
    """The event POSTed to the webhook; its id names the job and the ending, so a receiver
    can drop the duplicate a retried delivery may cause."""
    openai_status = FINE_TUNING_OPENAI_STATUS[status["phase"]]
    finished = parse_timestamp(status.get("finishedAt"))
    return {
        "object": "event",
        "id": f"ftevent-{ft.metadata['uid']}-{openai_status}",
        "type": EVENT_TYPES[openai_status],
        "created_at": int((finished or utcnow()).timestamp()),
        "data": {
            "id": ft.metadata["name"],
            "namespace": ft.metadata["namespace"],
            "status": openai_status,
            "fine_tuned_model": status.get("fineTunedModel"),
            "trained_tokens": status.get("trainedTokens"),
            "error": status.get("error"),
        },
    }


def attempt(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Attempt:
    """POSTs the event once."""
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return Attempt(Outcome.retry, f"webhook unreachable: {exc.__class__.__name__}: {exc}")
    message = f"webhook answered {response.status_code}"
    if response.status_code < 300:
        return Attempt(Outcome.delivered, message)
    if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
        return Attempt(Outcome.refused, message)
    return Attempt(Outcome.retry, message)


def retry_delay(attempts: int, first: float) -> timedelta:
    """How long to wait after the `attempts`-th failed attempt: `first` seconds, doubling,
    at most RETRY_CAP (with the defaults, 8 attempts span about 20 minutes)."""
    return min(timedelta(seconds=first * 2 ** (attempts - 1)), RETRY_CAP)
