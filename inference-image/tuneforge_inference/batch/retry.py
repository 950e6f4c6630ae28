"""When to retry a request and how long to wait first.

Overloaded servers answer 429 or 5xx and often say when to come back (Retry-After, or
OpenAI's retry-after-ms). Honouring that hint avoids hammering a recovering server; where
there is none, exponential backoff with full jitter spreads the retries of many in-flight
requests so they do not arrive again in one burst.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

# 408 and 409 are what servers (OpenAI included) answer for transient conflicts and
# request-level timeouts; every 5xx may be transient. Other 4xx are the request's fault.
RETRYABLE_STATUS = frozenset({408, 409, 429})


def is_retryable_status(status_code: int) -> bool:
    return status_code in RETRYABLE_STATUS or status_code >= 500


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff parameters; the defaults suit a shared gateway, tests pass faster ones."""

    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    # A server may ask for a long pause; beyond this we would rather spend a retry.
    max_retry_after_s: float = 120.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number `attempt` (0-based).

        With a Retry-After hint: at least the hint (capped), plus up to 10% jitter so that
        requests told the same moment do not return in lockstep. Without one: full jitter
        over an exponentially growing window.
        """
        if retry_after_s is not None:
            hint = min(max(retry_after_s, 0.0), self.max_retry_after_s)
            return hint + rng.uniform(0.0, 0.1 * hint)
        window = min(self.max_delay_s, self.base_delay_s * (2**attempt))
        return rng.uniform(0.0, window)


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The server's retry hint in seconds, or None when it gave none (or gave nonsense).

    Accepts `retry-after-ms` (OpenAI), `Retry-After` as seconds, and `Retry-After` as an
    HTTP date.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - (now or datetime.now(timezone.utc))).total_seconds(), 0.0)
