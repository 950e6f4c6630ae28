"""`tuneforge operator` as a subprocess against a real kube-apiserver, for the controller
tests: the same command and flags as production, with intervals short enough that a
test waits seconds, not minutes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tuneforge.local.controlplane import free_port

HARDWARE_PROFILES = [{"name": "a100-2", "gpuType": "NVIDIA-A100-SXM4-80GB", "gpuCount": 2, "memory": "64Gi",
                      "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                      "costPerHour": 7.5},
                     {"name": "h100-8x2", "gpuType": "NVIDIA-H100-80GB-HBM3", "gpuCount": 8, "gpuMemoryGb": 80,
                      "maxNodes": 2, "sharedMemory": "32Gi", "env": {"NCCL_DEBUG": "WARN"}}]

DEPENDENCY_GRACE_SECONDS = 8
"""Shorter than the operator's default, so that tests of a missing model fail in seconds."""

POD_ADMISSION_TIMEOUT_SECONDS = 15
"""Shorter than the operator's 10 minutes, so that a job whose Pods are refused fails in
seconds; long enough that a refusal lifted at once (the Job controller retries after 1, 2,
4, 8 s) is not one."""


class Operator:
    """`tuneforge operator` in a subprocess, logging to a file: standalone, or one replica
    of a peering group when `peering` names the group's KopfPeering object."""

    def __init__(self, kubeconfig: Path, store: Path, system_namespace: str, log: Path, namespaces: list[str],
                 *, peering: str | None = None, priority: int = 0, peering_lifetime: int = 60) -> None:
        self.kubeconfig, self.store, self.system_namespace = kubeconfig, store, system_namespace
        self.log, self.namespaces = log, namespaces
        self.peering, self.priority, self.peering_lifetime = peering, priority, peering_lifetime
        self.metrics_port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> "Operator":
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "TUNEFORGE_STORE_ROOT": f"file://{self.store}",
            "TUNEFORGE_SYSTEM_NAMESPACE": self.system_namespace,
            "TUNEFORGE_GATEWAY_INTERNAL_URL": "http://gateway.test:8000/v1",
            "TUNEFORGE_HARDWARE_PROFILES": json.dumps(HARDWARE_PROFILES),
        }
        args = [sys.executable, "-m", "tuneforge", "operator", "--liveness", "",
                "--metrics-port", str(self.metrics_port), "--poll-interval", "0.5", "--status-interval", "1",
                "--autoscale-interval", "0.5",
                "--dependency-grace", str(DEPENDENCY_GRACE_SECONDS),
                "--pod-admission-timeout", str(POD_ADMISSION_TIMEOUT_SECONDS),
                "--webhook-attempts", "3", "--webhook-retry-delay", "1"]
        if self.peering is None:
            args.append("--standalone")
        else:
            args += ["--peering", self.peering, "--priority", str(self.priority),
                     "--peering-lifetime", str(self.peering_lifetime)]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        self.process = subprocess.Popen(args, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def reconciles(self, kind: str) -> float:
        """`tuneforge_reconciles_total` of `kind` from this replica's /metrics (0 when it
        has not reconciled one)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == "tuneforge_reconciles_total" and sample.labels.get("kind") == kind)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
