"""The controller benchmark's baseline: a kopf operator of the same shape as
`tuneforge operator` that does no work.

Same kopf version and settings, the same watches and indexes on the same kinds
(tuneforge.controllers.run.build_registry and the controllers' `register`), each handler
only noting that it saw the object; with `--without-timers` each kind's handler is an
event handler, as the operator's tickers are fed by one. What tuneforge's operator costs beyond this (time,
memory) is what its own work costs; what both cost is kopf's price for watching the
objects. Of tuneforge it imports only its fix to kopf's start (controllers/kopf_readiness.py,
without which kopf would take over ten minutes to start on 10,000 objects), and not the
kubernetes client, so its memory is kopf's alone.

    python -m tests.bench.noop_operator [--namespace NS] --expect N --report PATH [--poll-interval S]
                                        [--without-timers]

Without `--without-timers` each kind has a kopf timer instead, the way the operator
reconciled before its tickers: kopf's per-object timer tasks (and the finalizer kopf
puts on every object a timer serves), to tell what the timers would cost.

When the FineTuningJob timer has run for N distinct objects it writes
time.monotonic() (system-wide on Linux, so the parent can compare it) to PATH.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path
from typing import Any

import kopf

from tuneforge.controllers import kopf_readiness

GROUP, VERSION = "tuneforge.io", "v1alpha1"
MANAGED = {"app.kubernetes.io/managed-by": "tuneforge"}
OWNER_LABELS = ("tuneforge.io/fine-tuning-job", "tuneforge.io/batch-job", "tuneforge.io/model-deployment")
TERMINAL = ("Succeeded", "Failed", "Cancelled")


class Seen:
    """The distinct FineTuningJobs handled so far; reports once when all were."""

    def __init__(self, expect: int, report: Path) -> None:
        self.expect, self.report = expect, report
        self.uids: set[str] = set()
        self.lock = threading.Lock()

    def add(self, uid: str) -> None:
        with self.lock:
            if uid in self.uids:
                return
            self.uids.add(uid)
            if len(self.uids) == self.expect:
                tmp = self.report.with_suffix(".tmp")
                tmp.write_text(repr(time.monotonic()))
                tmp.replace(self.report)


def build_registry(seen: Seen, poll_interval: float, timers: bool = True) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry, id="login")(kopf.login_via_client)

    def child_index(namespace: str, labels: dict, **_: Any) -> dict | None:
        owner = next((labels[label] for label in OWNER_LABELS if label in labels), None)
        return {(labels.get("app.kubernetes.io/component"), namespace, owner): None} if owner else None

    kopf.index("batch", "v1", "jobs", labels=MANAGED, registry=registry, id="tf_jobs")(child_index)
    kopf.index("v1", "pods", labels=MANAGED, registry=registry, id="tf_pods")(child_index)
    kopf.index("apps", "v1", "deployments", labels=MANAGED, registry=registry, id="tf_deployments")(child_index)
    kopf.index(GROUP, VERSION, "basemodels", registry=registry, id="tf_basemodels")(lambda name, **_: {name: None})
    kopf.index(GROUP, VERSION, "modeldeployments", registry=registry, id="tf_modeldeployments")(
        lambda namespace, **_: {namespace: None})
    kopf.index(GROUP, VERSION, "finetuningjobs", registry=registry, id="tf_finetuned")(lambda **_: None)

    def nothing(**_: Any) -> None:
        return None

    def handle_job(uid: str, **_: Any) -> None:
        seen.add(uid)

    def every(plural: str, interval: float, **filters: Any):
        if timers:
            return kopf.timer(GROUP, VERSION, plural, registry=registry, id="reconcile", interval=interval, **filters)
        return kopf.on.event(GROUP, VERSION, plural, registry=registry, id="reconcile", **filters)

    every("basemodels", poll_interval * 5)(nothing)
    every("finetuningjobs", poll_interval, when=lambda status, **_: status.get("phase") not in TERMINAL)(handle_job)
    kopf.on.event(GROUP, VERSION, "finetuningjobs", registry=registry, id="forget")(nothing)
    every("modeldeployments", poll_interval)(nothing)
    every("batchjobs", poll_interval)(nothing)
    return registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", action="append", default=[], help="default: the whole cluster")
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--without-timers", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="tuneforge.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="tuneforge.io", key="last-handled-configuration")
    settings.execution.max_workers = args.workers
    settings.watching.server_timeout = 300
    kopf_readiness.install()
    kopf.run(registry=build_registry(Seen(args.expect, args.report), args.poll_interval,
                                  timers=not args.without_timers), settings=settings,
             standalone=True, clusterwide=not args.namespace, namespaces=args.namespace)


if __name__ == "__main__":
    main()
