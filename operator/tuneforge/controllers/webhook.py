"""The webhook a FineTuningJob calls when it ends: the event, its signature, its delivery.

The event is shaped like OpenAI's fine_tuning.job.* events and signed with HMAC-SHA256 of
the raw body, so a receiver can check it came from this operator. Delivery retries what
may pass (no answer, a 5xx, 408, 429) and gives up at once on other 4xx: the receiver
has refused the event and will refuse it again.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, NamedTuple

import httpx

from tuneforge.api.v1alpha1 import FineTuningJobResource
from tuneforge.controllers.status import FINE_TUNING_OPENAI_STATUS, parse_timestamp, utcnow


class Delivery(NamedTuple):
    delivered: bool
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
        "type": f"fine_tuning.job.{openai_status}",
        "created_at": int((finished or utcnow()).timestamp()),
        "data": {
            "id": ft.metadata["name"],
            "namespace": ft.metadata["namespace"],
            "status": openai_status,
            "fine_tuned_model": status.get("fineTunedModel"),
            "error": status.get("error"),
        },
    }


def sign(secret: bytes, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the raw body>`, the X-Tuneforge-Signature header."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def deliver(url: str, body: bytes, headers: dict[str, str], *, attempts: int, timeout: float, logger: Any) -> Delivery:
    """POSTs the event, backing off between attempts (1, 2, 4 ... at most 10 seconds)."""
    error = ""
    for attempt in range(attempts):
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=timeout)
            if response.status_code < 300:
                return Delivery(True, f"webhook answered {response.status_code}")
            error = f"webhook answered {response.status_code}"
            if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                break
        except httpx.HTTPError as exc:
            error = f"webhook unreachable: {exc}"
        logger.info("webhook attempt %d failed: %s", attempt + 1, error)
        time.sleep(min(2**attempt, 10))
    return Delivery(False, error)
