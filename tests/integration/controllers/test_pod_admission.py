"""The operator's Pods under real admission: the kube-apiserver's Pod Security plugin admits
every trainer, batch runner and serving Pod in a namespace enforcing "restricted" (every
namespace of this package does), and when admission refuses them (here a ResourceQuota of
0 Pods, which the same Job and ReplicaSet controllers report the same way as a Pod
Security refusal) the resources show it, and the jobs fail after the operator's admission
timeout (tests/support/operator_process.py: POD_ADMISSION_TIMEOUT_SECONDS)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kubernetes import client

from tests.support.apiserver import Kube, wait_for
from tests.support.operator_process import POD_ADMISSION_TIMEOUT_SECONDS, Operator
from tests.support.store_layout import chat_example, upload

pytestmark = pytest.mark.integration
QUOTA = "no-pods"


def _file(store_root: Path, namespace: str, lines: list[str]) -> str:
    file_id = f"file-{uuid.uuid4().hex[:12]}"
    upload(store_root, namespace, file_id, lines)
    return file_id


def _workloads(kube: Kube, operator: Operator, store_root: Path, namespace: str, base_model: str) -> tuple[str, str]:
    """A ModelDeployment of `base_model`, then a FineTuningJob and a BatchJob against it."""
    kube.create(namespace, "modeldeployments", {
        "apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
        "spec": {"baseModel": base_model, "engine": "cpu"}})
    # The batch validates against what is served: the operator has indexed the deployment once it wrote status.
    wait_for(lambda: kube.status(namespace, "modeldeployments", "serve"), 30, "ModelDeployment status", operator)
    ftjob = f"ftjob-{uuid.uuid4().hex[:10]}"
    kube.create(namespace, "finetuningjobs", {
        "apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob", "metadata": {"name": ftjob},
        "spec": {"baseModel": base_model, "trainingFile": _file(store_root, namespace, [
            chat_example(i) for i in range(12)])}})
    batch = f"batch-{uuid.uuid4().hex[:10]}"
    line = ('{"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions", '
            f'"body": {{"model": "{base_model}", "messages": [{{"role": "user", "content": "hi"}}]}}}}')
    kube.create(namespace, "batchjobs", {
        "apiVersion": "tuneforge.io/v1alpha1", "kind": "BatchJob", "metadata": {"name": batch},
        "spec": {"inputFile": _file(store_root, namespace, [line])}})
    return ftjob, batch


def _pods(kube: Kube, namespace: str, label: str, name: str) -> list[client.V1Pod]:
    return kube.pods(namespace, f"tuneforge.io/{label}={name}")


def _pods_admitted(kube: Kube, namespace: str, plural: str, name: str) -> dict | None:
    conditions = kube.status(namespace, plural, name).get("conditions") or []
    return next((c for c in conditions if c["type"] == "PodsAdmitted"), None)


def test_the_operators_pods_are_admitted_where_restricted_is_enforced(
        kube: Kube, operator: Operator, namespace: str, base_model: str, store_root: Path) -> None:
    labels = kube.core.read_namespace(namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    bare = {"metadata": {"name": "bare"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    with pytest.raises(client.ApiException, match="violates PodSecurity"):
        kube.core.create_namespaced_pod(namespace, bare)

    ftjob, batch = _workloads(kube, operator, store_root, namespace, base_model)
    for label, name in (("fine-tuning-job", ftjob), ("batch-job", batch), ("model-deployment", "serve")):
        [pod] = wait_for(lambda: _pods(kube, namespace, label, name), 60, f"the Pod of {name}", operator)
        assert pod.spec.security_context.run_as_non_root and pod.spec.automount_service_account_token is False
    for plural, name in (("finetuningjobs", ftjob), ("batchjobs", batch), ("modeldeployments", "serve")):
        condition = _pods_admitted(kube, namespace, plural, name)
        assert condition is None or condition["status"] == "True", condition


@pytest.fixture
def no_pods(kube: Kube, namespace: str) -> str:
    """A ResourceQuota that admits no Pod in the test namespace."""
    kube.core.create_namespaced_resource_quota(namespace, {"metadata": {"name": QUOTA}, "spec": {"hard": {"pods": "0"}}})
    return QUOTA


def _refused(kube: Kube, namespace: str, plural: str, name: str) -> dict | None:
    condition = _pods_admitted(kube, namespace, plural, name)
    return condition if condition and condition["status"] == "False" else None


def test_refused_pods_show_on_the_resources_and_fail_the_jobs_after_the_timeout(
        kube: Kube, operator: Operator, namespace: str, base_model: str, store_root: Path, no_pods: str) -> None:
    ftjob, batch = _workloads(kube, operator, store_root, namespace, base_model)
    for plural, name in (("finetuningjobs", ftjob), ("batchjobs", batch), ("modeldeployments", "serve")):
        condition = wait_for(lambda: _refused(kube, namespace, plural, name), 30, f"{name} PodsAdmitted=False",
                             operator)
        assert condition["reason"] == "PodCreationRefused"
        assert f"exceeded quota: {no_pods}" in condition["message"] and "is forbidden" in condition["message"]
    warnings = {(e.involved_object.name, e.reason) for e in kube.core.list_namespaced_event(namespace).items
                if e.type == "Warning"}
    assert {(ftjob, "PodCreationRefused"), (batch, "PodCreationRefused"), ("serve", "PodCreationRefused")} <= warnings

    timeout = POD_ADMISSION_TIMEOUT_SECONDS + 30
    wait_for(lambda: kube.status(namespace, "finetuningjobs", ftjob).get("phase") == "Failed", timeout,
             "the fine-tuning job to fail", operator)
    error = kube.status(namespace, "finetuningjobs", ftjob)["error"]
    assert error["code"] == "pod_creation_refused" and f"exceeded quota: {no_pods}" in error["message"]
    wait_for(lambda: kube.status(namespace, "batchjobs", batch).get("phase") == "Failed", timeout,
             "the batch to fail", operator)
    assert kube.status(namespace, "batchjobs", batch)["errors"][0]["code"] == "pod_creation_refused"
    # Their Jobs are gone, so nothing goes on knocking at the quota.
    wait_for(lambda: kube.job(namespace, f"{ftjob}-trainer") is None and kube.job(namespace, f"{batch}-runner") is None,
             30, "the Jobs to be deleted", operator)


def test_the_condition_clears_once_the_pods_are_created(
        kube: Kube, operator: Operator, namespace: str, base_model: str, store_root: Path, no_pods: str) -> None:
    name = f"ftjob-{uuid.uuid4().hex[:10]}"
    kube.create(namespace, "finetuningjobs", {
        "apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob", "metadata": {"name": name},
        "spec": {"baseModel": base_model, "trainingFile": _file(store_root, namespace, [
            chat_example(i) for i in range(12)])}})
    wait_for(lambda: _refused(kube, namespace, "finetuningjobs", name), 30, "PodsAdmitted=False", operator)
    kube.core.delete_namespaced_resource_quota(no_pods, namespace)

    wait_for(lambda: _pods(kube, namespace, "fine-tuning-job", name), POD_ADMISSION_TIMEOUT_SECONDS,
             "the trainer Pod", operator)
    condition = wait_for(lambda: (c := _pods_admitted(kube, namespace, "finetuningjobs", name))["status"] == "True"
                         and c, 30, "PodsAdmitted=True", operator)
    assert condition["reason"] == "PodsCreated"
    assert kube.status(namespace, "finetuningjobs", name)["phase"] == "Queued"
