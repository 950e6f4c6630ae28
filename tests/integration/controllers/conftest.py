"""Fixtures for the controller tests: the operator as a subprocess against the real API
server, an artifact store in a temp dir, and helpers that play trainer, runner and kubelet.

One operator serves the whole session, watching only namespaces `ctl-*` (which this
`namespace` fixture makes), so it never reconciles the objects of other test packages, so each test pays only for its own objects. There is no kubelet: Pods the
Job and ReplicaSet controllers create stay Pending until a test patches their status,
exactly as a kubelet would report it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tuneforge.local.controlplane import ControlPlane, free_port

GROUP, VERSION = "tuneforge.io", "v1alpha1"
HARDWARE_PROFILES = [{"name": "a100-2", "gpuType": "NVIDIA-A100-SXM4-80GB", "gpuCount": 2, "memory": "64Gi",
                      "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                      "costPerHour": 7.5},
                     {"name": "h100-8x2", "gpuType": "NVIDIA-H100-80GB-HBM3", "gpuCount": 8, "gpuMemoryGb": 80,
                      "maxNodes": 2, "sharedMemory": "32Gi", "env": {"NCCL_DEBUG": "WARN"}}]

DEPENDENCY_GRACE_SECONDS = 8
"""Shorter than the operator's default, so that tests of a missing model fail in seconds."""


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
                "--dependency-grace", str(DEPENDENCY_GRACE_SECONDS)]
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


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def system_namespace(api_client: client.ApiClient) -> str:
    name = f"ctl-system-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@pytest.fixture(scope="session")
def operator(control_plane: ControlPlane, store_root: Path, system_namespace: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = Operator(control_plane.kubeconfig, store_root, system_namespace, log, ["ctl-*"]).start()
    yield op
    op.stop()


@pytest.fixture
def namespace_prefix() -> str:
    """Test namespaces fall inside the operator's watch (`ctl-*`)."""
    return "ctl"


@pytest.fixture(autouse=True)
def store_env(store_root: Path, system_namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test process sees the same settings as the operator (for tuneforge.apikeys)."""
    from tuneforge.config import settings

    monkeypatch.setenv("TUNEFORGE_STORE_ROOT", f"file://{store_root}")
    monkeypatch.setenv("TUNEFORGE_SYSTEM_NAMESPACE", system_namespace)
    settings.cache_clear()
    yield
    settings.cache_clear()  # the next tests must not see this package's environment


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, message: str = "", operator: Operator | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    detail = f"\noperator log:\n{operator.tail()}" if operator else ""
    raise AssertionError(f"timed out waiting for {message or predicate}; last value {last!r}{detail}")


class Kube:
    """Thin conveniences over the real API for tests."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def create(self, namespace: str | None, plural: str, body: dict) -> dict:
        if namespace is None:
            return self.custom.create_cluster_custom_object(GROUP, VERSION, plural, body)
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)

    def get(self, namespace: str | None, plural: str, name: str) -> dict:
        if namespace is None:
            return self.custom.get_cluster_custom_object(GROUP, VERSION, plural, name)
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)

    def status(self, namespace: str | None, plural: str, name: str) -> dict:
        return self.get(namespace, plural, name).get("status") or {}

    def patch_spec(self, namespace: str, plural: str, name: str, spec: dict) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, {"spec": spec})

    def job(self, namespace: str, name: str) -> client.V1Job | None:
        try:
            return self.batch.read_namespaced_job(name, namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pods(self, namespace: str, selector: str) -> list[client.V1Pod]:
        return [p for p in self.core.list_namespaced_pod(namespace, label_selector=selector).items
                if not p.metadata.deletion_timestamp]

    def set_pod(self, namespace: str, pod: str, container: str, *, phase: str, exit_code: int | None = None,
                message: str = "", ready: bool = False) -> None:
        """Reports a Pod's state as the kubelet would."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if exit_code is None:
            state = {"running": {"startedAt": now}}
        else:
            state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                    "message": message, "startedAt": now, "finishedAt": now}}
        conditions = [{"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": now}]
        status = {
            "phase": phase, "startTime": now, "conditions": conditions, "podIP": "10.0.0.1",
            "containerStatuses": [{"name": container, "image": "img", "imageID": "", "ready": ready,
                                   "restartCount": 0, "started": exit_code is None, "state": state}],
        }
        self.core.patch_namespaced_pod_status(pod, namespace, {"status": status})


@pytest.fixture(scope="session")
def kube(api_client: client.ApiClient) -> Kube:
    return Kube(api_client)


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def chat_example(i: int) -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})


def upload(store_root: Path, namespace: str, file_id: str, lines: list[str]) -> None:
    directory = store_root / namespace / "files" / file_id
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "content").write_text("\n".join(lines) + "\n")
    (directory / "meta.json").write_text(json.dumps({"id": file_id, "object": "file"}))
