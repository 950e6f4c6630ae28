"""Whether this replica acts, by the rule kopf's peering applies to its own handlers.

kopf pauses a replica's watch handlers while another live replica has a higher priority,
or the same one, but keeps that decision to itself. The tickers (ticker.py) run outside
kopf's handlers, so they read the same peering record and apply the same rule: a replica
never reconciles while kopf has paused its handlers, and both take over together.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from kubernetes.client.exceptions import ApiException

from tuneforge.controllers import kube

PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
CACHE_SECONDS = 1.0
"""How long one reading of the peering record answers: well under the lifetime of a
record (60 s by default), so a standby takes over within a second of kopf resuming it."""


def own_identity() -> str:
    """This replica's peering identity, handed to kopf too so both read the same record
    entry as ours: the Pod's name (with a suffix unique to the process, as a restarted
    container is a new peer) or, outside a Pod, the host and process."""
    host = os.environ.get("POD_ID") or os.uname().nodename
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def acts(identity: str, priority: int, peers: Mapping[str, Mapping[str, Any]], now: datetime) -> bool:
    """kopf's rule: pause while any other live peer has a higher or the same priority."""
    for peer, record in peers.items():
        if peer == identity or not isinstance(record, Mapping):
            continue
        lastseen = record.get("lastseen")
        if lastseen is None:
            continue
        seen = datetime.fromisoformat(str(lastseen))
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=timezone.utc)
        if seen + timedelta(seconds=int(record.get("lifetime", 60))) < now:
            continue
        if int(record.get("priority", 0)) >= priority:
            return False
    return True


@dataclass
class Leadership:
    """Answers `acting(namespace)` from the peering records, each read at most once a
    second. Standalone replicas always act. A record that cannot be read means not acting,
    as kopf stays paused without its peering object.

    kopf pauses the whole operator while any of its peering records shows a conflict. A
    cluster-wide operator has one record (ClusterKopfPeering); one started with
    `--namespace` has a KopfPeering in each watched namespace, so it acts only while every
    record it knows of lets it: those of the namespaces named exactly and of every
    namespace it has reconciled an object in (a glob's namespaces are known as their
    objects appear)."""

    identity: str
    priority: int = 0
    peering: str | None = None
    namespaces: tuple[str, ...] = ()
    _known: set[str] = field(default_factory=set)
    _readings: dict[str | None, tuple[float, bool]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._known.update(name for name in self.namespaces if not any(c in name for c in "*?[!"))

    def acting(self, namespace: str | None) -> bool:
        if self.peering is None:
            return True
        if not self.namespaces:
            return self._reading(None)
        with self._lock:
            if namespace is not None:
                self._known.add(namespace)
            records = sorted(self._known)
        return bool(records) and all(self._reading(record) for record in records)

    def _reading(self, namespace: str | None) -> bool:
        with self._lock:
            reading = self._readings.get(namespace)
            if reading and time.monotonic() - reading[0] < CACHE_SECONDS:
                return reading[1]
        answer = self._read(namespace)
        with self._lock:
            self._readings[namespace] = (time.monotonic(), answer)
        return answer

    def _read(self, namespace: str | None) -> bool:
        try:
            if namespace is None:
                record = kube.custom().get_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", self.peering)
            else:
                record = kube.custom().get_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", self.peering)
        except ApiException:
            return False
        return acts(self.identity, self.priority, record.get("status") or {}, datetime.now(timezone.utc))
