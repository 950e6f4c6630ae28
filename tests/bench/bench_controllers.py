"""Controller benchmark: 1,000 FineTuningJobs (`--objects 10000` for 10,000) on a fresh
local control plane.

    .venv/bin/python -m tests.bench.bench_controllers [--quick] [--objects N]  (or: make bench-controllers)

Setup: etcd + kube-apiserver with an audit policy that records every mutating request,
one Ready BaseModel, one valid training file in a temporary artifact store, and N
FineTuningJobs created before any operator starts (so the creator's own writes and CPU
are outside every measurement). kube-controller-manager is not started: the figure is
the operator's, and on a small shared machine the Job controller turning 1,000 Jobs into
1,000 Pods would compete for the same cores and add its own 2,000+ writes, measuring
itself rather than tuneforge.

1. The baseline: tests/bench/noop_operator.py `--without-timers`, a kopf operator with
   the same watches, indexes, event handlers and settings that does nothing, runs until
   its FineTuningJob handler has seen all N objects; then it is stopped. After it, the
   same no-op operator with a kopf timer on each object instead (as tuneforge's operator
   reconciled before its tickers): what kopf's per-object timers would cost.
2. `tuneforge operator --standalone` with its production defaults (watching the whole
   cluster, as the chart runs it) runs until all N trainer Jobs exist and every job is
   Queued, plus a few seconds of steady state (every job reconciled again with nothing
   to do), then is stopped.

Figures (each process's peak RSS is its VmHWM, read just before it is stopped):
- trainer Jobs per second from operator start (process spawn: interpreter start, kopf
  startup and the initial LIST included) until all N exist; baseline: objects per second
  the no-op operator handled on the same objects. Target: >= 30 jobs/s
  (>= 50 at 10,000 jobs).
- API writes per reconcile: mutating requests the API server recorded in its audit log
  from the operator (admin user, not this script's user agent) from its start until
  every FineTuningJob is Queued, over the reconciles `tuneforge_reconciles_total` counted
  by then. Baseline: the
  no-op operator's writes per handled object (kopf's own writes: none expected). Also
  reported per FineTuningJob against the four writes that bring one to Queued (ConfigMap,
  Job, status patch, Event).
- Operator peak RSS vs the no-op operator's. Target: <= 200 MB
  (<= 400 MB at 10,000 jobs).
- The no-op operator's peak RSS with its timers vs with event handlers instead (reported).

`--quick` (or TUNEFORGE_BENCH_QUICK=1) uses 100 jobs. Writes bench-results/controllers.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.local.controlplane import ControlPlane, free_port

from tests.bench import common
from tests.support.store_layout import chat_example, upload

N_JOBS = common.objects(100 if common.quick() else 1_000)
MIN_JOBS_PER_S = 50 if N_JOBS >= 10_000 else 30
"""Trainer Jobs per second from operator start: 50 for the 10,000-job run, 30 below it."""
MAX_RSS_MB = 400 if N_JOBS >= 10_000 else 200
"""Peak RSS: 200 MB up to 1,000 jobs, 400 MB for the 10,000-job run."""
STEADY_S = 3.0 if common.quick() else 10.0
TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0
"""Seconds an operator gets to exit on SIGTERM before it is killed: its figures are taken by then."""
NAMESPACE, SYSTEM_NAMESPACE = "bench", "bench-system"
TRAINING_FILE = "file-bench000001"
BENCH_AGENT = "tuneforge-bench-controllers"
ESSENTIAL_WRITES_PER_JOB = 4
"""ConfigMap (the TrainingRun), Job, one status patch to Queued, one Event for the transition."""


class Plane:
    """The control plane, an admin client that marks its requests, and the audit log."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        self.api.user_agent = BENCH_AGENT
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def trainer_jobs(self) -> int:
        """How many Jobs exist in the namespace (only the operator makes Jobs there), from
        one single-item LIST: the API server reports remainingItemCount only for lists
        without a selector."""
        page = self.batch.list_namespaced_job(NAMESPACE, limit=1)
        return len(page.items) + (page.metadata.remaining_item_count or 0)

    def phases(self) -> Counter:
        jobs = self.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "finetuningjobs")["items"]
        return Counter((job.get("status") or {}).get("phase") for job in jobs)

    def audit_offset(self) -> int:
        return self.plane.audit_log.stat().st_size if self.plane.audit_log.exists() else 0

    def quiet_audit_offset(self, quiet_s: float = 2.0, timeout_s: float = 120.0) -> int:
        """The audit log's size once nothing has been written to it for `quiet_s`: a stopped
        operator's requests still sitting in the API server's sockets are received, and
        logged, after it exited (the no-op operator's finalizer patches: over 3,000 at
        10,000 objects), and must not count against the next one."""
        deadline = time.monotonic() + timeout_s
        size, since = self.audit_offset(), time.monotonic()
        while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
            time.sleep(0.25)
            if (now := self.audit_offset()) != size:
                size, since = now, time.monotonic()
        return size

    def writes_since(self, offset: int, until: float) -> Counter:
        """Mutating requests by (verb, resource, namespace) the API server completed after `offset`
        in its audit log and received before `until` (a time.time()), from the admin
        user other than this script (i.e. from the operator under test)."""
        counts: Counter = Counter()
        limit = datetime.fromtimestamp(until, timezone.utc)
        with self.plane.audit_log.open("rb") as log:
            log.seek(offset)
            for line in log:
                event = json.loads(line)
                if event.get("stage") != "ResponseComplete" or event["user"]["username"] != "admin":
                    continue
                if event.get("userAgent") == BENCH_AGENT:
                    continue
                received = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
                if received > limit:
                    continue
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                counts[(event["verb"], resource, ref.get("namespace"))] += 1
        return counts


def by_request(writes: Counter) -> dict[str, int]:
    """Writes by verb and resource, most first, all namespaces together."""
    totals: Counter = Counter()
    for (verb, resource, _), n in writes.items():
        totals[f"{verb} {resource}"] += n
    return dict(totals.most_common())


def populate(plane: Plane, store: Path, workdir: Path) -> None:
    for name in (NAMESPACE, SYSTEM_NAMESPACE):
        plane.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    weights = workdir / "weights"
    weights.mkdir()
    plane.custom.create_cluster_custom_object(GROUP, VERSION, "basemodels", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "BaseModel", "metadata": {"name": "bench-base"},
        "spec": {"source": {"uri": f"file://{weights}"}, "sharedDeployment": False}})
    # Ready as the catalog is in steady state; the operator re-validates it on its first tick.
    plane.custom.patch_cluster_custom_object_status(GROUP, VERSION, "basemodels", "bench-base",
                                                    {"status": {"phase": "Ready"}})
    upload(store, NAMESPACE, TRAINING_FILE, [chat_example(i) for i in range(10)])
    started = time.perf_counter()
    for i in range(N_JOBS):
        plane.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "finetuningjobs", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuningJob", "metadata": {"name": f"ftjob-{i:06d}"},
            "spec": {"baseModel": "bench-base", "trainingFile": TRAINING_FILE}})
    print(f"created {N_JOBS} FineTuningJobs in {time.perf_counter() - started:.1f} s", flush=True)


def stop(process: subprocess.Popen) -> float:
    """The process's peak RSS in MB so far (VmHWM), then SIGTERM. Not wait4's ru_maxrss:
    that survives exec, so it would count this benchmark's own pages at fork time."""
    status = Path(f"/proc/{process.pid}/status").read_text()
    peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # kopf can miss a SIGTERM when its event loop is flooded
        process.kill()
        process.wait()
    return peak_kib / 1024


def tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-40:])


def run_noop(plane: Plane, workdir: Path, *, timers: bool = True) -> dict[str, Any]:
    name = "noop" if timers else "noop-without-timers"
    report, log = workdir / f"{name}-report", workdir / f"{name}.log"
    offset = plane.quiet_audit_offset()
    started, started_wall = time.monotonic(), time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.noop_operator", "--expect", str(N_JOBS), "--report", str(report),
         *([] if timers else ["--without-timers"])],
        cwd=common.REPO_ROOT, env={**os.environ, "KUBECONFIG": str(plane.plane.kubeconfig)},
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        while not report.exists():
            if process.poll() is not None or time.monotonic() - started > TIMEOUT_S:
                raise RuntimeError(f"the no-op operator did not handle {N_JOBS} objects:\n{tail(log)}")
            time.sleep(0.1)
        done = float(report.read_text())
        ended_wall = started_wall + (done - started)
        time.sleep(STEADY_S)
    finally:
        rss = stop(process)
    writes = plane.writes_since(offset, ended_wall)
    return {"seconds": done - started, "rss_mb": rss, "writes": writes}


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "tuneforge_reconciles":
            for sample in family.samples:
                if sample.name == "tuneforge_reconciles_total":
                    values[sample.labels["kind"]] += sample.value
    return values


def run_operator(plane: Plane, store: Path, workdir: Path) -> dict[str, Any]:
    log, port = workdir / "operator.log", free_port()
    env = {**os.environ, "KUBECONFIG": str(plane.plane.kubeconfig), "TUNEFORGE_STORE_ROOT": f"file://{store}",
           "TUNEFORGE_SYSTEM_NAMESPACE": SYSTEM_NAMESPACE}
    offset = plane.quiet_audit_offset()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", "operator", "--standalone", "--liveness", "", "--metrics-port", str(port)],
        cwd=common.REPO_ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        while (count := plane.trainer_jobs()) < N_JOBS:
            if process.poll() is not None or time.monotonic() - started > TIMEOUT_S:
                raise RuntimeError(f"only {count}/{N_JOBS} trainer Jobs:\n{tail(log)}")
            time.sleep(0.25)
        seconds = time.monotonic() - started
        while (phases := plane.phases()) != Counter({"Queued": N_JOBS}):
            if process.poll() is not None or time.monotonic() - started > TIMEOUT_S:
                raise RuntimeError(f"not every FineTuningJob is Queued: {dict(phases)}:\n{tail(log)}")
            time.sleep(0.5)
        settled_wall = time.time()
        reconciles = metrics(port)
        time.sleep(STEADY_S)
    finally:
        rss = stop(process)
    writes = plane.writes_since(offset, settled_wall)
    return {"seconds": seconds, "rss_mb": rss, "writes": writes, "reconciles": reconciles}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-controllers-") as tmp:
        workdir = Path(tmp)
        store = workdir / "store"
        with ControlPlane(state_dir=workdir / "controlplane", audit_writes=True) as control_plane:
            control_plane.apply_crds()
            plane = Plane(control_plane)
            populate(plane, store, workdir)
            untimed = run_noop(plane, workdir, timers=False)
            print(f"no-op operator without timers: {untimed}", flush=True)
            noop = run_noop(plane, workdir)
            print(f"no-op operator: {noop}", flush=True)
            op = run_operator(plane, store, workdir)
            plane.api.close()
    writes = sum(op["writes"].values())
    # The jobs' own writes are those in their namespace: the platform key Secret, the
    # BaseModel's status and its Event (namespace default) are written once per operator.
    job_writes = sum(n for (_, _, namespace), n in op["writes"].items() if namespace == NAMESPACE)
    reconciles = sum(op["reconciles"].values())
    breakdown = by_request(op["writes"])
    print(f"operator: {op['seconds']:.1f} s, {reconciles:.0f} reconciles {dict(op['reconciles'])}, "
          f"{writes} writes {breakdown}, peak RSS {op['rss_mb']:.1f} MB", flush=True)
    rate, noop_rate = N_JOBS / op["seconds"], N_JOBS / untimed["seconds"]
    per_reconcile = writes / reconciles
    results = [
        common.result(f"trainer_jobs_per_s ({N_JOBS} FineTuningJobs)", rate, "jobs/s",
                      "no-op kopf operator: objects handled per s", noop_rate, f"value >= {MIN_JOBS_PER_S}",
                      rate >= MIN_JOBS_PER_S),
        common.result("api_writes_per_reconcile", per_reconcile, "writes",
                      "no-op kopf operator: writes per handled object", sum(untimed["writes"].values()) / N_JOBS,
                      "value <= 4 (the writes that bring a new job to Queued)",
                      per_reconcile <= ESSENTIAL_WRITES_PER_JOB),
        common.result("api_writes_per_fine_tuning_job", job_writes / N_JOBS, "writes",
                      "ConfigMap + Job + status patch + Event", ESSENTIAL_WRITES_PER_JOB,
                      "ratio <= 1.0 (no writes beyond the essential ones, in the jobs' namespace)",
                      job_writes / N_JOBS <= ESSENTIAL_WRITES_PER_JOB),
        common.result("operator_peak_rss", op["rss_mb"], "MB", "no-op kopf operator peak RSS", untimed["rss_mb"],
                      f"value <= {MAX_RSS_MB} MB", op["rss_mb"] <= MAX_RSS_MB),
        common.result("kopf_timers_peak_rss", noop["rss_mb"], "MB", "the no-op operator with event handlers in "
                      "place of its timers", untimed["rss_mb"], "reported (what kopf's per-object timers cost)", True),
    ]
    common.write("controllers", results, fine_tuning_jobs=N_JOBS, controller_manager=False,
                 noop_writes=by_request(noop["writes"]),
                 noop_without_timers_writes=by_request(untimed["writes"]),
                 operator_args="--standalone (production defaults: --poll-interval 2 --workers 32)",
                 operator_writes=breakdown, operator_reconciles=dict(op["reconciles"]))


if __name__ == "__main__":
    main()
