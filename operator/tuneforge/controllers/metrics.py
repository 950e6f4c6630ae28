"""Prometheus metrics of the operator, served on their own port (`--metrics-port`).

- `tuneforge_reconciles_total{kind,result}`: reconciles that succeeded or raised;
- `tuneforge_reconcile_duration_seconds{kind}`: how long one reconcile took;
- `tuneforge_resources{kind,phase}`: objects this replica has seen, by phase;
- `tuneforge_modeldeployment_replicas{namespace,name,kind}`: an autoscaled deployment's
  current and desired replicas (kind `current` / `desired`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("tuneforge_reconciles_total", "Reconciles by kind and result.", ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "tuneforge_reconcile_duration_seconds",
    "Time spent in one reconcile.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RESOURCES = Gauge("tuneforge_resources", "Resources by kind and phase.", ["kind", "phase"])
REPLICAS = Gauge("tuneforge_modeldeployment_replicas", "Replicas of autoscaled ModelDeployments.",
                 ["namespace", "name", "kind"])


def forget_replicas(namespace: str, name: str) -> None:
    """Drops a deployment's replica gauges once nothing autoscales it any more."""
    for kind in ("current", "desired"):
        with suppress(KeyError):
            REPLICAS.remove(namespace, name, kind)


class PhaseTracker:
    """Keeps `tuneforge_resources` equal to the count of objects per phase: each object
    is counted once, under its latest phase, until it is forgotten."""

    def __init__(self) -> None:
        self._phases: dict[str, dict[str, str]] = defaultdict(dict)

    def observe(self, kind: str, uid: str, phase: str | None) -> None:
        phase = phase or "Unknown"
        previous = self._phases[kind].get(uid)
        if previous == phase:
            return
        if previous is not None:
            RESOURCES.labels(kind, previous).dec()
        self._phases[kind][uid] = phase
        RESOURCES.labels(kind, phase).inc()

    def forget(self, kind: str, uid: str) -> None:
        previous = self._phases[kind].pop(uid, None)
        if previous is not None:
            RESOURCES.labels(kind, previous).dec()


PHASES = PhaseTracker()


@contextmanager
def reconcile(kind: str) -> Iterator[None]:
    """Times one reconcile and counts it as ok or error (the exception propagates)."""
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        RECONCILES.labels(kind, "error").inc()
        raise
    else:
        RECONCILES.labels(kind, "ok").inc()
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - start)


def serve(port: int) -> None:
    """Serves /metrics on `port` (0 disables it)."""
    if port:
        start_http_server(port)
