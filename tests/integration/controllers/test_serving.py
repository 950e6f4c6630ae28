"""BaseModel and ModelDeployment controllers against the real API server."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tuneforge.api.v1alpha1.autoscaling import held_requests_annotation
from tuneforge.contracts import ServingSpec

from tests.support.apiserver import Kube, wait_for
from tests.support.operator_process import Operator

pytestmark = pytest.mark.integration


def base_model_body(name: str, uri: str, **spec: object) -> dict:
    return {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel", "metadata": {"name": name},
            "spec": {"source": {"uri": uri}, "serving": {"engine": "cpu", "maxAdapters": 4}, **spec}}


def test_base_model_ready_and_shared_deployment(kube: Kube, operator: Operator, system_namespace: str,
                                                tmp_path: Path) -> None:
    good, bad = f"bm-{uuid.uuid4().hex[:8]}", f"bm-{uuid.uuid4().hex[:8]}"
    kube.create(None, "basemodels", base_model_body(good, f"file://{tmp_path}"))
    kube.create(None, "basemodels", base_model_body(bad, f"file://{tmp_path}/missing", sharedDeployment=False))
    try:
        wait_for(lambda: kube.status(None, "basemodels", good).get("phase") == "Ready", 30, "Ready", operator)
        wait_for(lambda: kube.status(None, "basemodels", bad).get("phase") == "Failed", 30, "Failed", operator)
        ready = kube.status(None, "basemodels", bad)["conditions"][0]
        assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InvalidSource")

        shared = wait_for(lambda: _get(kube, system_namespace, good), 30, "shared deployment", operator)
        assert shared["metadata"]["labels"]["tuneforge.io/shared"] == "true"
        assert shared["metadata"]["labels"]["tuneforge.io/base-model"] == good
        assert shared["metadata"]["ownerReferences"][0]["name"] == good
        assert shared["spec"]["maxAdapters"] == 4 and shared["spec"]["engine"] == "cpu"
        # The shared ModelDeployment is itself reconciled into a Deployment.
        wait_for(lambda: _deployment(kube, system_namespace, good), 30, "shared Deployment", operator)
        assert _get(kube, system_namespace, bad) is None
    finally:
        for name in (good, bad):
            kube.custom.delete_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", name)


def test_a_base_model_whose_name_no_service_can_take_still_gets_its_shared_deployment(
        kube: Kube, operator: Operator, system_namespace: str, tmp_path: Path) -> None:
    """`7b-chat` is a DNS label (so a baseModel reference) but no Service name; the shared
    deployment, found by its labels, is named so that its Service can exist. A dotted name
    is no baseModel reference at all: that entry fails, saying so."""
    base, dotted = f"7b-{uuid.uuid4().hex[:8]}", f"bm-{uuid.uuid4().hex[:8]}.5-7b"
    kube.create(None, "basemodels", base_model_body(base, f"file://{tmp_path}"))
    kube.create(None, "basemodels", base_model_body(dotted, f"file://{tmp_path}"))
    try:
        selector = f"tuneforge.io/base-model={base},tuneforge.io/shared=true"
        [shared] = wait_for(lambda: kube.custom.list_namespaced_custom_object(
            "tuneforge.io", "v1alpha1", system_namespace, "modeldeployments", label_selector=selector)["items"],
            30, "shared deployment", operator)
        name = shared["metadata"]["name"]
        assert name.startswith(f"m-{base}-")
        wait_for(lambda: _deployment(kube, system_namespace, name), 30, "shared Deployment", operator)
        assert kube.core.read_namespaced_service(name, system_namespace).spec.ports[0].port == 8000

        wait_for(lambda: kube.status(None, "basemodels", dotted).get("phase") == "Failed", 30, "Failed", operator)
        ready = kube.status(None, "basemodels", dotted)["conditions"][0]
        assert (ready["status"], ready["reason"]) == ("False", "InvalidName")
        assert f"{dotted!r}" in ready["message"] and "spec.modelId" in ready["message"]
    finally:
        for name in (base, dotted):
            kube.custom.delete_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", name)


def _get(kube: Kube, namespace: str, name: str) -> dict | None:
    try:
        return kube.get(namespace, "modeldeployments", name)
    except Exception:
        return None


def _deployment(kube: Kube, namespace: str, name: str):
    try:
        return kube.apps.read_namespaced_deployment(name, namespace)
    except Exception:
        return None


def test_model_deployment_ready_only_with_ready_pods(kube: Kube, operator: Operator, namespace: str,
                                                     tmp_path: Path) -> None:
    base = f"bm-{uuid.uuid4().hex[:8]}"
    kube.create(None, "basemodels", base_model_body(base, f"file://{tmp_path}", sharedDeployment=False))
    try:
        kube.create(namespace, "modeldeployments", {
            "apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat"},
            "spec": {"baseModel": base, "replicas": 1,
                     "adapters": [{"name": "ft:x:y::ftjob-abc", "source": "ftjob-abc"}]}})
        deployment = wait_for(lambda: _deployment(kube, namespace, "chat"), 30, "Deployment", operator)
        container = deployment.spec.template.spec.containers[0]
        assert container.command == ["tuneforge-serve"] and container.startup_probe.failure_threshold >= 100
        service = kube.core.read_namespaced_service("chat", namespace)
        assert service.spec.ports[0].port == 8000
        spec = ServingSpec.model_validate_json(
            kube.core.read_namespaced_config_map("chat-serving", namespace).data["run.json"])
        assert spec.adapters[0].uri.endswith(f"/{namespace}/fine-tuning/ftjob-abc/adapter")

        status = wait_for(lambda: kube.status(namespace, "modeldeployments", "chat").get("phase") == "Deploying"
                          and kube.status(namespace, "modeldeployments", "chat"), 30, "Deploying", operator)
        assert status["endpoint"] == f"http://chat.{namespace}.svc:8000/v1"
        assert status["servedModels"] == [base, "ft:x:y::ftjob-abc"]

        selector = "tuneforge.io/model-deployment=chat"
        pods = wait_for(lambda: kube.pods(namespace, selector), 30, "serving Pod", operator)
        # Running but not ready (still loading, or crash-looping): not Ready.
        kube.set_pod(namespace, pods[0].metadata.name, "server", phase="Running", ready=False)
        kube.set_pod(namespace, pods[0].metadata.name, "server", phase="Running", ready=True)
        wait_for(lambda: kube.status(namespace, "modeldeployments", "chat").get("phase") == "Ready", 60,
                 "Ready", operator)
        assert kube.status(namespace, "modeldeployments", "chat")["readyReplicas"] == 1

        # A spec change rolls out a new generation: not Ready until its Pod is ready.
        kube.patch_spec(namespace, "modeldeployments", "chat", {"engineArgs": ["--dtype", "float32"]})
        wait_for(lambda: kube.status(namespace, "modeldeployments", "chat").get("phase") == "Deploying", 30,
                 "Deploying after spec change", operator)
        status = kube.status(namespace, "modeldeployments", "chat")
        assert status["observedGeneration"] == 2
        new = wait_for(lambda: [p for p in kube.pods(namespace, selector) if p.metadata.name != pods[0].metadata.name],
                       30, "new Pod", operator)
        kube.set_pod(namespace, new[0].metadata.name, "server", phase="Running", ready=True)
        wait_for(lambda: kube.status(namespace, "modeldeployments", "chat").get("phase") == "Ready", 60,
                 "Ready again", operator)
    finally:
        kube.custom.delete_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", base)


def _replicas(kube: Kube, namespace: str, name: str) -> int | None:
    deployment = _deployment(kube, namespace, name)
    return None if deployment is None else deployment.spec.replicas


def test_replicas_follow_the_spec_or_the_autoscaler(kube: Kube, operator: Operator, namespace: str,
                                                    tmp_path: Path) -> None:
    """A fixed count is applied as written; with autoscaling the operator starts one
    replica, goes to zero when no engine reports load, and back to one when a gateway says
    a request waits. (No engine runs here: the Pods stay Pending, so the load is the held
    requests alone.)"""
    base = f"bm-{uuid.uuid4().hex[:8]}"
    kube.create(None, "basemodels", base_model_body(base, f"file://{tmp_path}", sharedDeployment=False))
    try:
        kube.create(namespace, "modeldeployments", {
            "apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "fixed"},
            "spec": {"baseModel": base, "replicas": 2}})
        wait_for(lambda: _replicas(kube, namespace, "fixed") == 2, 30, "2 replicas", operator)
        kube.patch_spec(namespace, "modeldeployments", "fixed", {"replicas": 3})
        wait_for(lambda: _replicas(kube, namespace, "fixed") == 3, 30, "3 replicas", operator)

        kube.create(namespace, "modeldeployments", {
            "apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "elastic"},
            "spec": {"baseModel": base, "replicas": 5,
                     "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "targetInFlight": 2,
                                     "windowSeconds": 1, "scaleDownDelaySeconds": 2}}})
        wait_for(lambda: _replicas(kube, namespace, "elastic") == 1, 30, "the initial replica", operator)
        wait_for(lambda: _replicas(kube, namespace, "elastic") == 0, 30, "zero replicas when idle", operator)
        status = kube.status(namespace, "modeldeployments", "elastic")["autoscaling"]
        assert (status["desiredReplicas"], status["reason"]) == (0, "no requests for 2s")
        wait_for(lambda: kube.status(namespace, "modeldeployments", "elastic").get("phase") == "Pending", 30,
                 "Pending at zero replicas", operator)

        kube.custom.patch_namespaced_custom_object("tuneforge.io", "v1alpha1", namespace, "modeldeployments", "elastic",
                                                   {"metadata": {"annotations": held_requests_annotation(5, time.time())}})
        wait_for(lambda: _replicas(kube, namespace, "elastic") == 3, 30, "replicas for 5 held requests", operator)
        status = kube.status(namespace, "modeldeployments", "elastic")["autoscaling"]
        assert (status["desiredReplicas"], status["reason"]) == (3, "5 requests waiting for a replica")
        assert status["lastScaleTime"]
        # A re-apply (a spec change rolls the Pods) keeps the autoscaler's count.
        template = _deployment(kube, namespace, "elastic").spec.template.metadata.annotations
        kube.patch_spec(namespace, "modeldeployments", "elastic", {"engineArgs": ["--dtype", "float32"]})
        wait_for(lambda: _deployment(kube, namespace, "elastic").spec.template.metadata.annotations != template,
                 30, "the changed spec applied", operator)
        assert _replicas(kube, namespace, "elastic") == 3
        # Neither carries a finalizer: deleting them never waits for the operator.
        for name in ("fixed", "elastic"):
            assert not kube.get(namespace, "modeldeployments", name)["metadata"].get("finalizers"), name
    finally:
        kube.custom.delete_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", base)


def test_a_name_no_service_can_take_fails_the_deployment_with_the_reason(kube: Kube, operator: Operator,
                                                                         namespace: str) -> None:
    """A dotted name is a valid ModelDeployment name but not a Service name: the
    deployment fails once, saying so, instead of having its Service refused on every tick."""
    name = "tiny.v1"
    kube.create(namespace, "modeldeployments", {
        "apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
        "spec": {"baseModel": "tiny", "replicas": 1}})
    status = wait_for(lambda: kube.status(namespace, "modeldeployments", name).get("phase") == "Failed"
                      and kube.status(namespace, "modeldeployments", name), 30, "Failed", operator)
    available = next(c for c in status["conditions"] if c["type"] == "Available")
    assert (available["status"], available["reason"]) == ("False", "InvalidName")
    assert "'tiny.v1'" in available["message"] and "RFC 1035" in available["message"]
    assert _deployment(kube, namespace, name) is None
