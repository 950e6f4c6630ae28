"""Conveniences over a real kube-apiserver for the integration tests: tuneforge's custom
objects, playing the kubelet, waiting on a condition, and authenticating as a
ServiceAccount."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from kubernetes import client

from tuneforge.local.controlplane import ControlPlane

if TYPE_CHECKING:
    from tests.support.operator_process import Operator

from tuneforge.api.v1alpha1 import GROUP, VERSION


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, message: str = "", operator: Operator | None = None) -> Any:
    """Polls `predicate` until it returns something truthy; on a timeout the failure shows
    the operator's log when there is one, since that is where the reason usually is."""
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


def service_account_kubeconfig(plane: ControlPlane, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig whose user is the ServiceAccount, with a token from the TokenRequest API:
    what a Pod running under that account authenticates with."""
    token = plane.kubectl("create", "token", account, "-n", namespace, "--duration", "2h").stdout.strip()
    config = copy.deepcopy(yaml.safe_load(plane.kubeconfig.read_text()))
    config["users"] = [{"name": account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    path.write_text(yaml.safe_dump(config))
    return path
