"""Timestamps as each party writes them: the API server's RFC 3339 (with nanoseconds on
Pod logs), the OpenAI API's Unix seconds, the management API's RFC 3339 in UTC and the
ISO 8601 a caller may send. One module, so every route converts them the same way."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from tuneforge.gateway.errors import bad_request

_KUBE_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def unix(value: str | datetime | None) -> int | None:
    """An RFC 3339 timestamp (as the API server writes it) as Unix seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(value.timestamp())


def kube_time(value: str) -> datetime | None:
    """An RFC 3339 time as Kubernetes writes it, nanoseconds included (Python parses at most
    microseconds, so the fraction is cut to six digits)."""
    match = _KUBE_TIME.match(value)
    if not match:
        return None
    fraction = f".{match.group(2)[:6]}" if match.group(2) else ""
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(f"{match.group(1)}{fraction}{zone}")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str, param: str) -> datetime:
    """An ISO 8601 timestamp from a caller; one without a zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise bad_request(f"'{value}' is not an ISO 8601 timestamp (e.g. 2030-01-31T12:00:00Z).", param=param,
                          code="invalid_timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
