"""BatchJob controller against the real API server: validation, the runner Job and its
API key, progress from the runner, completion, cancel and expiry."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tuneforge import apikeys
from tuneforge.api.v1alpha1.labels import FINALIZER
from tuneforge.contracts import BATCH_FINALIZE_MARKER, BatchFinalize, BatchRun
from tuneforge.controllers import batch as batch_controller
from tuneforge.controllers import builders

from tests.support.apiserver import Kube, wait_for
from tests.support.operator_process import DEPENDENCY_GRACE_SECONDS, Operator
from tests.support.store_layout import upload, write_json

pytestmark = pytest.mark.integration
PLURAL = "batchjobs"


@pytest.fixture
def served_base(kube: Kube, operator: Operator, namespace: str, tmp_path: Path) -> str:
    """A Ready BaseModel with a ModelDeployment in the test namespace."""
    name = f"bm-{uuid.uuid4().hex[:8]}"
    kube.create(None, "basemodels", {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel",
                                     "metadata": {"name": name},
                                     "spec": {"source": {"uri": f"file://{tmp_path}"}, "sharedDeployment": False}})
    kube.create(namespace, "modeldeployments", {"apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment",
                                                "metadata": {"name": "serve"},
                                                "spec": {"baseModel": name, "engine": "cpu"}})
    # The operator has indexed the deployment (and so serves its base) once it wrote status.
    wait_for(lambda: kube.status(namespace, "modeldeployments", "serve"), 30, "ModelDeployment status", operator)
    yield name
    kube.custom.delete_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", name)


def request(i: int, model: str, custom_id: str | None = None) -> str:
    return json.dumps({"custom_id": custom_id or f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]}})


def new_batch(kube: Kube, store_root: Path, namespace: str, lines: list[str], name: str | None = None,
              **spec: object) -> str:
    file_id = f"file-{uuid.uuid4().hex[:12]}"
    upload(store_root, namespace, file_id, lines)
    name = name or f"batch-{uuid.uuid4().hex[:10]}"
    kube.create(namespace, PLURAL, {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BatchJob",
                                    "metadata": {"name": name}, "spec": {"inputFile": file_id, **spec}})
    return name


def phase(kube: Kube, namespace: str, name: str) -> str | None:
    return kube.status(namespace, PLURAL, name).get("phase")


def system_keys(kube: Kube, system_namespace: str, name: str) -> list:
    return kube.core.list_namespaced_secret(system_namespace, label_selector=f"tuneforge.io/batch-job={name}").items


def test_batch_runs_to_completion_and_revokes_its_key(kube: Kube, operator: Operator, namespace: str,
                                                      served_base: str, store_root: Path,
                                                      system_namespace: str) -> None:
    name = new_batch(kube, store_root, namespace, [request(i, served_base) for i in range(3)])
    job = wait_for(lambda: kube.job(namespace, f"{name}-runner"), 30, "runner Job", operator)
    container = job.spec.template.spec.containers[0]
    assert container.command == ["tuneforge-batch"]
    key_env = [e for e in container.env if e.name == "TUNEFORGE_BATCH_API_KEY"][0]
    assert key_env.value_from.secret_key_ref.name == f"{name}-api-key"
    run = BatchRun.model_validate_json(kube.core.read_namespaced_config_map(f"{name}-run", namespace).data["run.json"])
    assert run.target_base_url == "http://gateway.test:8000/v1" and served_base in run.served_models

    key = base64.b64decode(kube.core.read_namespaced_secret(f"{name}-api-key", namespace).data["TUNEFORGE_BATCH_API_KEY"]).decode()
    [stored] = system_keys(kube, system_namespace, name)
    grant = apikeys.parse_key_secret({"metadata": {"name": stored.metadata.name}, "data": stored.data}, key)
    assert grant.tenant == namespace and grant.scopes == frozenset({"chat"})

    status = kube.status(namespace, PLURAL, name)
    assert status["phase"] == "Validating" and status["requestCounts"]["total"] == 3
    assert status["expiresAt"] and status["createdAt"]

    batch_dir = store_root / namespace / "batches" / name
    write_json(batch_dir / "progress.json", {"status": "in_progress", "request_counts": {"total": 3, "completed": 1}})
    wait_for(lambda: phase(kube, namespace, name) == "InProgress", 30, "InProgress", operator)
    write_json(batch_dir / "progress.json", {
        "status": "completed", "request_counts": {"total": 3, "completed": 3, "failed": 0},
        "usage": {"input_tokens": 30, "output_tokens": 12, "total_tokens": 42},
        "output_file_id": run.output_file_id, "completed_at": "2026-01-01T00:00:00Z"})
    pod = wait_for(lambda: kube.pods(namespace, f"tuneforge.io/batch-job={name}"), 30, "runner Pod", operator)[0]
    kube.set_pod(namespace, pod.metadata.name, "runner", phase="Succeeded", exit_code=0)
    wait_for(lambda: phase(kube, namespace, name) == "Completed", 60, "Completed", operator)
    status = kube.status(namespace, PLURAL, name)
    assert status["outputFile"] == run.output_file_id and status["usage"]["totalTokens"] == 42
    assert status["requestCounts"] == {"total": 3, "completed": 3, "failed": 0}
    wait_for(lambda: not system_keys(kube, system_namespace, name), 30, "system key deleted", operator)
    assert kube.core.list_namespaced_secret(namespace, field_selector=f"metadata.name={name}-api-key").items == []


@pytest.mark.parametrize("lines,code,line", [
    (lambda m: [request(1, m, "same"), request(2, m, "same")], "duplicate_custom_id", 2),
    (lambda m: [request(1, m), "{not json"], "invalid_json_line", 2),
    (lambda m: [request(1, "no-such-model")], "model_not_found", 1),
])
def test_invalid_input_fails_with_code_and_line(kube: Kube, operator: Operator, namespace: str, served_base: str,
                                                store_root: Path, lines, code: str, line: int) -> None:
    name = new_batch(kube, store_root, namespace, lines(served_base))
    wait_for(lambda: phase(kube, namespace, name) == "Failed", 30, "Failed", operator)
    [error] = kube.status(namespace, PLURAL, name)["errors"]
    assert error["code"] == code and error["line"] == line
    assert kube.job(namespace, f"{name}-runner") is None


def test_a_name_too_long_to_label_the_runner_fails_the_batch_at_once(kube: Kube, operator: Operator,
                                                                    namespace: str, served_base: str,
                                                                    store_root: Path) -> None:
    name = new_batch(kube, store_root, namespace, [request(0, served_base)], name="batch-" + "a" * 70)
    wait_for(lambda: phase(kube, namespace, name) == "Failed", 30, "Failed", operator)
    [error] = kube.status(namespace, PLURAL, name)["errors"]
    assert error["code"] == "invalid_name" and "76 characters" in error["message"]
    assert kube.job(namespace, builders.runner_job_name(name)) is None


def test_batch_waits_for_a_deployment_applied_with_it(kube: Kube, operator: Operator, namespace: str,
                                                      store_root: Path, tmp_path: Path) -> None:
    """`kubectl apply` of a BatchJob and the ModelDeployment serving its model, in either
    order: the batch waits in Validating (condition WaitingForModel) instead of failing."""
    base = f"bm-{uuid.uuid4().hex[:8]}"
    name = new_batch(kube, store_root, namespace, [request(1, base)])
    waiting = wait_for(lambda: [c for c in kube.status(namespace, PLURAL, name).get("conditions", [])
                                if c["type"] == "Validated" and c["reason"] == "WaitingForModel"],
                       DEPENDENCY_GRACE_SECONDS, "WaitingForModel", operator)
    assert base in waiting[0]["message"] and phase(kube, namespace, name) == "Validating"
    kube.create(None, "basemodels", {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel",
                                     "metadata": {"name": base},
                                     "spec": {"source": {"uri": f"file://{tmp_path}"}, "sharedDeployment": False}})
    try:
        kube.create(namespace, "modeldeployments", {"apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment",
                                                    "metadata": {"name": "serve"},
                                                    "spec": {"baseModel": base, "engine": "cpu"}})
        wait_for(lambda: kube.job(namespace, f"{name}-runner"), 30, "runner Job", operator)
        assert phase(kube, namespace, name) == "Validating" and "errors" not in kube.status(namespace, PLURAL, name)
    finally:
        kube.custom.delete_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", base)


def test_cancel_before_the_runner_started(kube: Kube, operator: Operator, namespace: str, served_base: str,
                                          store_root: Path, system_namespace: str) -> None:
    name = new_batch(kube, store_root, namespace, [request(1, served_base)])
    wait_for(lambda: kube.job(namespace, f"{name}-runner"), 30, "runner Job", operator)
    kube.patch_spec(namespace, PLURAL, name, {"cancel": True})
    wait_for(lambda: phase(kube, namespace, name) == "Cancelled", 30, "Cancelled", operator)
    assert (store_root / namespace / "batches" / name / "cancel").exists()
    wait_for(lambda: kube.job(namespace, f"{name}-runner") is None, 30, "runner Job deleted", operator)
    wait_for(lambda: not system_keys(kube, system_namespace, name), 30, "key revoked", operator)


def test_deleting_a_running_batch_revokes_its_key(kube: Kube, operator: Operator, namespace: str,
                                                  served_base: str, store_root: Path, system_namespace: str) -> None:
    """The one finalizer tuneforge keeps: the batch's key lives in the system namespace,
    where no ownerReference reaches. kopf finds the deletion with no record of the object
    kept on it (controllers/essence.py): no annotation of its own is ever written."""
    name = new_batch(kube, store_root, namespace, [request(1, served_base)])
    wait_for(lambda: kube.job(namespace, f"{name}-runner"), 30, "runner Job", operator)
    assert system_keys(kube, system_namespace, name)
    metadata = kube.get(namespace, PLURAL, name)["metadata"]
    assert metadata["finalizers"] == [FINALIZER]
    assert not [a for a in metadata.get("annotations") or {} if a.startswith("tuneforge.io/")], metadata.get("annotations")

    kube.custom.delete_namespaced_custom_object("tuneforge.io", "v1alpha1", namespace, PLURAL, name)
    wait_for(lambda: not system_keys(kube, system_namespace, name), 30, "key revoked", operator)
    wait_for(lambda: not kube.custom.list_namespaced_custom_object(
        "tuneforge.io", "v1alpha1", namespace, PLURAL, field_selector=f"metadata.name={name}")["items"],
        30, "the BatchJob gone", operator)


def test_cancel_while_running_waits_for_the_runner(kube: Kube, operator: Operator, namespace: str,
                                                   served_base: str, store_root: Path) -> None:
    name = new_batch(kube, store_root, namespace, [request(1, served_base)])
    wait_for(lambda: kube.job(namespace, f"{name}-runner"), 30, "runner Job", operator)
    batch_dir = store_root / namespace / "batches" / name
    write_json(batch_dir / "progress.json", {"status": "in_progress", "request_counts": {"total": 1}})
    wait_for(lambda: phase(kube, namespace, name) == "InProgress", 30, "InProgress", operator)
    kube.patch_spec(namespace, PLURAL, name, {"cancel": True})
    wait_for(lambda: phase(kube, namespace, name) == "Cancelling", 30, "Cancelling", operator)
    assert (batch_dir / "cancel").exists()
    write_json(batch_dir / "progress.json", {"status": "cancelled", "request_counts": {"total": 1, "completed": 0}})
    pod = wait_for(lambda: kube.pods(namespace, f"tuneforge.io/batch-job={name}"), 30, "runner Pod", operator)[0]
    kube.set_pod(namespace, pod.metadata.name, "runner", phase="Succeeded", exit_code=0)
    wait_for(lambda: phase(kube, namespace, name) == "Cancelled", 60, "Cancelled", operator)
    assert kube.status(namespace, PLURAL, name)["cancellingAt"]


def test_runner_reported_expiry_keeps_partial_results(kube: Kube, operator: Operator, namespace: str,
                                                      served_base: str, store_root: Path) -> None:
    name = new_batch(kube, store_root, namespace, [request(i, served_base) for i in range(4)], completionWindow="1h")
    wait_for(lambda: kube.job(namespace, f"{name}-runner"), 30, "runner Job", operator)
    status = kube.status(namespace, PLURAL, name)
    created = datetime.fromisoformat(status["createdAt"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(status["expiresAt"].replace("Z", "+00:00"))
    assert (expires - created).total_seconds() == 3600
    batch_dir = store_root / namespace / "batches" / name
    write_json(batch_dir / "progress.json", {"status": "expired", "request_counts": {"total": 4, "completed": 2, "failed": 0},
                                             "output_file_id": "file-partial0001"})
    pod = wait_for(lambda: kube.pods(namespace, f"tuneforge.io/batch-job={name}"), 30, "runner Pod", operator)[0]
    kube.set_pod(namespace, pod.metadata.name, "runner", phase="Succeeded", exit_code=0)
    wait_for(lambda: phase(kube, namespace, name) == "Expired", 60, "Expired", operator)
    status = kube.status(namespace, PLURAL, name)
    assert status["outputFile"] == "file-partial0001" and status["requestCounts"]["completed"] == 2


def test_stuck_runner_is_stopped_after_the_window_and_its_grace(kube: Kube, operator: Operator, namespace: str,
                                                                served_base: str, store_root: Path,
                                                                system_namespace: str) -> None:
    """The controller-side fallback: a runner that runs but never reports expiry is given
    its cancel grace plus RUNNER_EXIT_GRACE beyond `status.expiresAt`, then its Job is
    deleted and the finalizer Job, told `expired` by the finalize marker, publishes what the
    runner finished; the batch ends Expired with its files and counts.

    The deadline enforced is the one published in status.expiresAt, so moving it into the
    past stands in for the hours a real window takes (the shortest window is 1h)."""
    name = new_batch(kube, store_root, namespace, [request(i, served_base) for i in range(4)], completionWindow="1h")
    wait_for(lambda: kube.job(namespace, f"{name}-runner"), 30, "runner Job", operator)
    pod = wait_for(lambda: kube.pods(namespace, f"tuneforge.io/batch-job={name}"), 30, "runner Pod", operator)[0]
    kube.set_pod(namespace, pod.metadata.name, "runner", phase="Running")
    batch_dir = store_root / namespace / "batches" / name
    write_json(batch_dir / "progress.json", {"status": "in_progress",
                                             "request_counts": {"total": 4, "completed": 2, "failed": 1}})
    wait_for(lambda: phase(kube, namespace, name) == "InProgress", 30, "InProgress", operator)
    wait_for(lambda: kube.status(namespace, PLURAL, name).get("requestCounts", {}).get("completed") == 2, 30,
             "progress copied", operator)

    def expire(ago: timedelta) -> None:
        at = (datetime.now(timezone.utc) - ago).strftime("%Y-%m-%dT%H:%M:%SZ")
        kube.custom.patch_namespaced_custom_object_status("tuneforge.io", "v1alpha1", namespace, PLURAL, name,
                                                          {"status": {"expiresAt": at}})

    grace = timedelta(seconds=BatchRun.model_fields["cancel_grace_s"].default) + batch_controller.RUNNER_EXIT_GRACE
    # The window has passed but the runner's grace has not: it may still finalize itself.
    expire(grace / 2)
    reconciles = operator.reconciles("BatchJob")
    wait_for(lambda: operator.reconciles("BatchJob") >= reconciles + 3, 30, "three more reconciles", operator)
    assert phase(kube, namespace, name) == "InProgress" and kube.job(namespace, f"{name}-runner") is not None

    expire(grace + timedelta(seconds=5))
    wait_for(lambda: phase(kube, namespace, name) == "Finalizing", 30, "Finalizing", operator)
    wait_for(lambda: kube.job(namespace, f"{name}-runner") is None, 30, "runner Job deleted", operator)
    marker = BatchFinalize.model_validate_json((batch_dir / BATCH_FINALIZE_MARKER).read_text())
    assert marker.status == "expired"
    assert kube.status(namespace, PLURAL, name)["finalizerJob"] == f"{name}-finalizer"
    finalizer = wait_for(lambda: kube.pods(namespace, f"tuneforge.io/batch-job={name},"
                                                      "app.kubernetes.io/component=batch-finalizer"),
                         30, "finalizer Pod", operator)[0]
    write_json(batch_dir / "progress.json", {
        "status": "expired", "request_counts": {"total": 4, "completed": 2, "failed": 2},
        "output_file_id": "file-out", "error_file_id": "file-err", "expired_at": "2026-01-01T00:00:00Z"})
    kube.set_pod(namespace, finalizer.metadata.name, "runner", phase="Succeeded", exit_code=0)
    wait_for(lambda: phase(kube, namespace, name) == "Expired", 60, "Expired", operator)
    status = kube.status(namespace, PLURAL, name)
    assert status["requestCounts"] == {"total": 4, "completed": 2, "failed": 2} and status["expiredAt"]
    assert (status["outputFile"], status["errorFile"]) == ("file-out", "file-err")
    assert [c for c in status["conditions"] if c["type"] == "Complete"][0]["reason"] == "Expired"

    def expired_warning() -> bool:
        events = kube.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        return any(e.reason == "Expired" and e.type == "Warning" for e in events)

    wait_for(expired_warning, 30, "a Warning event Expired", operator)
    wait_for(lambda: not system_keys(kube, system_namespace, name), 30, "key revoked", operator)
