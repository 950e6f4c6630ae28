"""A trainer's output as the management API's log entries: Pod log lines (with the level
each line's text implies) and, when no Pod log can be had, the trainer's event records.
Pure, so the level rules are tested on plain text."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from tuneforge.gateway.management.protocol import LogEntry
from tuneforge.gateway.times import kube_time, rfc3339

_LEVEL_WORD = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b")
_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning", "error": "error",
           "critical": "error", "fatal": "error"}


def _level(message: str) -> str:
    """The severity of one line of trainer output: a JSON line's own level (the trainer's
    termination message {code, message} is an error), a traceback, or a logging level word
    near the start of the line; plain output is info."""
    text = message.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            named = data.get("level") or data.get("levelname") or data.get("severity")
            if isinstance(named, str) and named.lower() in _LEVELS:
                return _LEVELS[named.lower()]
            if data.get("code") and data.get("message"):
                return "error"
    if text.startswith("Traceback (most recent call last)"):
        return "error"
    match = _LEVEL_WORD.search(text[:80])
    return _LEVELS[match.group(1).lower()] if match else "info"


def pod_log_entries(text: str, *, since: datetime | None = None) -> list[LogEntry]:
    """`kubectl logs --timestamps` output as entries, those at or after `since`; a line
    without a timestamp (none is expected) keeps its text with a null timestamp."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        stamp, _, message = line.partition(" ")
        moment = kube_time(stamp)
        if moment is None:
            stamp, message = None, line
        elif since is not None and moment < since:
            continue
        entries.append(LogEntry(timestamp=stamp, level=_level(message), message=message))
    return entries


def event_log_entries(events: Iterable[Mapping[str, Any]], *, since: datetime | None, lines: int) -> list[LogEntry]:
    """The trainer's event records (oldest first) as log entries: those at or after
    `since`, at most the newest `lines`."""
    entries = []
    for event in events:
        created = datetime.fromtimestamp(int(event.get("created_at") or 0), tz=timezone.utc)
        if since is not None and created < since:
            continue
        level = str(event.get("level") or "info").lower()
        entries.append(LogEntry(timestamp=rfc3339(created), level=_LEVELS.get(level, "info"),
                                message=str(event.get("message", ""))))
    return entries[-lines:] if lines else []


def newest_pod(pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The trainer Pod to read: the newest one (a resumed or restarted run makes new Pods),
    preferring Pods not being deleted."""
    ranked = sorted(pods, key=lambda p: (not p["metadata"].get("deletionTimestamp"),
                                         p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
    return ranked[-1] if ranked else None
