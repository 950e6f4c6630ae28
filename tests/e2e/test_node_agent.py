"""The node agent on Pods no controller of tuneforge makes: what it cannot run is reported
clearly and never stalls it; what it runs reports exit codes and termination messages
as a kubelet would, and its output through `kubectl logs`; deleting a Pod stops its
process. The tenant namespace enforces Pod Security "restricted", so these Pods carry the
security contexts the operator's carry."""

from __future__ import annotations

import json
import uuid

import pytest

from tuneforge.controllers.builders import restricted_container, workload_pod_security
from tuneforge.local.node import NODE_NAME

from tests.support.devstack import core, kubectl_json, wait_for

pytestmark = pytest.mark.e2e


def _apply(stack, pod: dict) -> str:
    stack.plane.kubectl("apply", "-n", stack.tenant, "-f", "-", input=json.dumps(pod))
    return pod["metadata"]["name"]


def _pod(name: str, container: dict, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "securityContext": workload_pod_security(),
                     "containers": [restricted_container(container)], **spec}}


def _events(stack, namespace: str, name: str) -> list[dict]:
    return [e for e in kubectl_json(stack, "get", "events", "-n", namespace)["items"]
            if e["involvedObject"]["name"] == name]


def _get(stack, namespace: str, name: str) -> dict:
    return kubectl_json(stack, "get", "pod", name, "-n", namespace)


def test_unsupported_image_and_unschedulable_pods_are_explained(dev_stack):
    namespace = dev_stack.tenant
    nginx = _apply(dev_stack, _pod(f"nginx-{uuid.uuid4().hex[:6]}", {"name": "web", "image": "nginx:1.27"}))
    gpu = _apply(dev_stack, _pod(f"gpu-{uuid.uuid4().hex[:6]}", {
        "name": "train", "image": dev_stack.settings.trainer_image,
        "resources": {"limits": {"nvidia.com/gpu": "1"}}}))

    warning = wait_for("the UnsupportedImage event", lambda: [
        e for e in _events(dev_stack, namespace, nginx) if e["reason"] == "UnsupportedImage"])[0]
    assert warning["type"] == "Warning" and "nginx:1.27" in warning["message"]
    pod = _get(dev_stack, namespace, nginx)
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert pod["status"]["phase"] == "Pending"
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "UnsupportedImage")
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "UnsupportedImage" and "only tuneforge's own images" in waiting["message"]

    failed = wait_for("the FailedScheduling event", lambda: [
        e for e in _events(dev_stack, namespace, gpu) if e["reason"] == "FailedScheduling"])[0]
    assert "Insufficient nvidia.com/gpu" in failed["message"]
    pod = _get(dev_stack, namespace, gpu)
    assert not pod["spec"].get("nodeName")
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")

    for name in (nginx, gpu):
        core(dev_stack).delete_namespaced_pod(name, namespace)
    wait_for("both Pods to be gone", lambda: not [
        p for p in kubectl_json(dev_stack, "get", "pods", "-n", namespace)["items"]
        if p["metadata"]["name"] in (nginx, gpu)])


def test_missing_config_waits_then_the_termination_message_is_reported(dev_stack):
    namespace = dev_stack.tenant
    name = f"trainer-{uuid.uuid4().hex[:6]}"
    _apply(dev_stack, _pod(name, {
        "name": "trainer", "image": dev_stack.settings.trainer_image, "command": ["tuneforge-train"],
        "args": ["--run", "/etc/tuneforge/run.json"], "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "run", "mountPath": "/etc/tuneforge"}]},
        volumes=[{"name": "run", "configMap": {"name": name}}]))

    waiting = wait_for("CreateContainerConfigError", lambda: (
        (_get(dev_stack, namespace, name).get("status") or {}).get("containerStatuses") or [{}])[0]
        .get("state", {}).get("waiting"))
    assert waiting["reason"] == "CreateContainerConfigError" and name in waiting["message"]
    not_started = dev_stack.plane.kubectl("logs", "-n", namespace, name, check=False)
    assert not_started.returncode != 0
    assert (f'container "trainer" in pod "{name}" is waiting to start: CreateContainerConfigError'
            in not_started.stderr)

    core(dev_stack).create_namespaced_config_map(namespace, {"metadata": {"name": name},
                                                             "data": {"run.json": '{"job_id": 1}'}})
    pod = wait_for("the trainer to fail on its bad run spec", lambda: (
        pod if (pod := _get(dev_stack, namespace, name))["status"].get("phase") == "Failed" else None), timeout=180)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1 and terminated["reason"] == "Error"
    assert json.loads(terminated["message"])["code"] == "invalid_run_spec"
    # The trainer's stderr, through the API server and the agent's kubelet endpoint.
    logged = dev_stack.plane.kubectl("logs", "-n", namespace, name).stdout
    assert logged.splitlines()[-1] == terminated["message"]
    assert dev_stack.plane.kubectl("logs", "-n", namespace, name, "--tail=1").stdout == terminated["message"] + "\n"
    assert pod["status"]["podIP"].startswith("127.0.")
    core(dev_stack).delete_namespaced_pod(name, namespace)
    wait_for("the Pod to be gone", lambda: name not in {
        p["metadata"]["name"] for p in kubectl_json(dev_stack, "get", "pods", "-n", namespace)["items"]})
