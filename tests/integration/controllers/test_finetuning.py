"""FineTuningJob controller against the real API server: validation, the trainer Job,
the phase walk driven by Pod status and trainer reports, cancel, pause/resume, Kueue,
webhooks and restart safety."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from kubernetes import client

from tuneforge.contracts import TrainingRun
from tuneforge.controllers import builders
from tuneforge.jobfiles import JobFiles
from tuneforge.serving_auth import PLATFORM_KEY_FIELD, PLATFORM_KEY_SECRET
from tuneforge.storage import ArtifactStore
from tuneforge.webhook_signing import job_signing_secret

from tests.support.apiserver import Kube, wait_for
from tests.support.operator_process import DEPENDENCY_GRACE_SECONDS, Operator
from tests.support.store_layout import chat_example, upload, write_json

pytestmark = pytest.mark.integration
PLURAL = "finetuningjobs"


@pytest.fixture
def base_model(kube: Kube, tmp_path: Path, operator: Operator) -> str:
    weights = tmp_path / "weights"
    weights.mkdir()
    name = f"bm-{uuid.uuid4().hex[:8]}"
    kube.create(None, "basemodels", {
        "apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel", "metadata": {"name": name},
        "spec": {"source": {"uri": f"file://{weights}"}, "sharedDeployment": False,
                 "serving": {"engine": "cpu"}},
    })
    yield name
    kube.custom.delete_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", name)


def ftjob(name: str, base: str, training: str, **spec: object) -> dict:
    return {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob", "metadata": {"name": name},
            "spec": {"baseModel": base, "trainingFile": training, **spec}}


def new_job(kube: Kube, store_root: Path, namespace: str, base: str, n_examples: int = 12, **spec: object) -> str:
    file_id = f"file-{uuid.uuid4().hex[:12]}"
    upload(store_root, namespace, file_id, [chat_example(i) for i in range(n_examples)])
    name = f"ftjob-{uuid.uuid4().hex[:10]}"
    kube.create(namespace, PLURAL, ftjob(name, base, file_id, **spec))
    return name


def phase_is(kube: Kube, namespace: str, name: str, phase: str):
    return lambda: kube.status(namespace, PLURAL, name).get("phase") == phase


def trainer_pod(kube: Kube, namespace: str, name: str, operator: Operator) -> str:
    pods = wait_for(lambda: kube.pods(namespace, f"tuneforge.io/fine-tuning-job={name}"), 30, "trainer Pod", operator)
    return pods[0].metadata.name


def test_job_walks_queued_running_succeeded(kube: Kube, operator: Operator, namespace: str, base_model: str,
                                            store_root: Path) -> None:
    name = new_job(kube, store_root, namespace, base_model, suffix="mine")
    wait_for(phase_is(kube, namespace, name, "Queued"), 30, "Queued", operator)
    status = kube.status(namespace, PLURAL, name)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Validated"] == "True"
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    assert status["trainerJob"] == f"{name}-trainer"

    job = kube.job(namespace, f"{name}-trainer")
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("FineTuningJob", name, True)
    assert job.spec.pod_failure_policy.rules[0].action == "Ignore"
    container = job.spec.template.spec.containers[0]
    assert container.command == ["tuneforge-train"] and container.args == ["--run", "/etc/tuneforge/run.json"]
    assert container.termination_message_policy == "FallbackToLogsOnError"
    cm = kube.core.read_namespaced_config_map(f"{name}-run", namespace)
    run = TrainingRun.model_validate_json(cm.data["run.json"])
    assert run.fine_tuned_model == f"ft:{base_model}:{namespace}:mine:{name}"
    assert run.training_file.startswith(f"file://{store_root}/{namespace}/files/file-")

    pod = trainer_pod(kube, namespace, name, operator)
    kube.set_pod(namespace, pod, "trainer", phase="Running")
    wait_for(phase_is(kube, namespace, name, "Running"), 30, "Running", operator)
    job_dir = store_root / namespace / "fine-tuning" / name
    write_json(job_dir / "progress.json", {"status": "running", "step": 7, "total_steps": 20, "epoch": 0.35,
                                           "trained_tokens": 700, "train_loss": 1.25})
    (job_dir / "checkpoints" / "step-5").mkdir(parents=True)
    (job_dir / "checkpoints" / "step-5" / "COMPLETE").write_text("")  # only complete checkpoints count
    wait_for(lambda: (kube.status(namespace, PLURAL, name).get("progress") or {}).get("step") == 7, 30,
             "progress", operator)
    status = kube.status(namespace, PLURAL, name)
    assert status["metrics"]["trainLoss"] == 1.25 and status["trainedTokens"] == 700
    assert status["checkpoints"]["latestStep"] == 5

    adapter = f"file://{job_dir}/adapter"
    write_json(job_dir / "result.json", {"fine_tuned_model": run.fine_tuned_model, "adapter_uri": adapter,
                                         "trained_tokens": 2000, "steps": 20, "epochs": 3,
                                         "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.0}})
    kube.set_pod(namespace, pod, "trainer", phase="Succeeded", exit_code=0)
    wait_for(phase_is(kube, namespace, name, "Succeeded"), 60, "Succeeded", operator)
    status = kube.status(namespace, PLURAL, name)
    assert status["fineTunedModel"] == f"ft:{base_model}:{namespace}:mine:{name}"
    assert status["adapterUri"] == adapter and status["trainedTokens"] == 2000
    assert status["hyperparameters"] == {"nEpochs": 3, "batchSize": 1, "learningRateMultiplier": 1.0}
    assert status["finishedAt"] and status["startedAt"]
    reasons = {e.reason for e in kube.core.list_namespaced_event(namespace).items if e.involved_object.name == name}
    assert {"Queued", "Running", "Succeeded"} <= reasons

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    assert 'tuneforge_reconciles_total{kind="FineTuningJob",result="ok"}' in metrics
    assert 'tuneforge_resources{kind="FineTuningJob",phase="Succeeded"}' in metrics
    assert "tuneforge_reconcile_duration_seconds_bucket" in metrics


def test_trainer_error_becomes_status_error(kube: Kube, operator: Operator, namespace: str, base_model: str,
                                            store_root: Path) -> None:
    name = new_job(kube, store_root, namespace, base_model)
    pod = trainer_pod(kube, namespace, name, operator)
    message = json.dumps({"code": "invalid_training_file", "message": "line 3: no assistant message", "param": "training_file"})
    kube.set_pod(namespace, pod, "trainer", phase="Failed", exit_code=1, message=message)
    wait_for(phase_is(kube, namespace, name, "Failed"), 60, "Failed", operator)
    error = kube.status(namespace, PLURAL, name)["error"]
    assert error == {"code": "invalid_training_file", "message": "line 3: no assistant message", "param": "training_file"}


@pytest.mark.parametrize("examples,code", [(3, "invalid_n_examples"), (0, "file_not_found")])
def test_invalid_input_fails_with_code(kube: Kube, operator: Operator, namespace: str, base_model: str,
                                       store_root: Path, examples: int, code: str) -> None:
    if examples:
        name = new_job(kube, store_root, namespace, base_model, n_examples=examples)
    else:
        name = f"ftjob-{uuid.uuid4().hex[:10]}"
        kube.create(namespace, PLURAL, ftjob(name, base_model, "file-doesnotexist0"))
    wait_for(phase_is(kube, namespace, name, "Failed"), 30, "Failed", operator)
    status = kube.status(namespace, PLURAL, name)
    assert status["error"]["code"] == code and status["error"]["param"] == "training_file"
    assert kube.job(namespace, f"{name}-trainer") is None
    warnings = [e for e in kube.core.list_namespaced_event(namespace).items
                if e.involved_object.name == name and e.type == "Warning"]
    assert warnings and warnings[0].reason == "ValidationFailed"


def test_a_name_too_long_to_label_the_trainer_fails_the_job_at_once(kube: Kube, operator: Operator, namespace: str,
                                                                   base_model: str, store_root: Path) -> None:
    file_id = f"file-{uuid.uuid4().hex[:12]}"
    upload(store_root, namespace, file_id, [chat_example(i) for i in range(12)])
    name = "ftjob-" + "a" * 70
    kube.create(namespace, PLURAL, ftjob(name, base_model, file_id))
    wait_for(phase_is(kube, namespace, name, "Failed"), 30, "Failed", operator)
    error = kube.status(namespace, PLURAL, name)["error"]
    assert error["code"] == "invalid_name" and "76 characters" in error["message"]
    assert kube.job(namespace, builders.trainer_job_name(name)) is None


def test_not_fine_tunable_model_fails(kube: Kube, operator: Operator, namespace: str, store_root: Path, tmp_path: Path) -> None:
    base = f"bm-{uuid.uuid4().hex[:8]}"
    kube.create(None, "basemodels", {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel",
                                     "metadata": {"name": base},
                                     "spec": {"source": {"uri": f"file://{tmp_path}"}, "fineTunable": False,
                                              "sharedDeployment": False}})
    try:
        name = new_job(kube, store_root, namespace, base)
        wait_for(phase_is(kube, namespace, name, "Failed"), 30, "Failed", operator)
        assert kube.status(namespace, PLURAL, name)["error"]["code"] == "model_not_fine_tunable"
    finally:
        kube.custom.delete_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", base)


def test_unknown_base_model_fails_after_the_grace(kube: Kube, operator: Operator, namespace: str,
                                                  store_root: Path) -> None:
    """A BaseModel may arrive just after its job, so the job waits (Validated Unknown)
    first; one that never comes fails the job with model_not_found."""
    missing = f"bm-missing-{uuid.uuid4().hex[:6]}"
    name = new_job(kube, store_root, namespace, missing)
    waiting = wait_for(lambda: [c for c in kube.status(namespace, PLURAL, name).get("conditions", [])
                                if c["type"] == "Validated" and c["status"] == "Unknown"], 10, "waiting", operator)
    assert missing in waiting[0]["message"]
    wait_for(phase_is(kube, namespace, name, "Failed"), DEPENDENCY_GRACE_SECONDS + 20, "Failed", operator)
    error = kube.status(namespace, PLURAL, name)["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"


def test_cancel_stops_the_trainer(kube: Kube, operator: Operator, namespace: str, base_model: str, store_root: Path) -> None:
    name = new_job(kube, store_root, namespace, base_model)
    wait_for(phase_is(kube, namespace, name, "Queued"), 30, "Queued", operator)
    kube.patch_spec(namespace, PLURAL, name, {"cancel": True})
    wait_for(phase_is(kube, namespace, name, "Cancelled"), 30, "Cancelled", operator)
    wait_for(lambda: kube.job(namespace, f"{name}-trainer") is None, 30, "trainer Job deleted", operator)


def test_suspend_pauses_and_resume_recreates_the_job(kube: Kube, operator: Operator, namespace: str,
                                                     base_model: str, store_root: Path) -> None:
    name = new_job(kube, store_root, namespace, base_model)
    pod = trainer_pod(kube, namespace, name, operator)
    kube.set_pod(namespace, pod, "trainer", phase="Running")
    wait_for(phase_is(kube, namespace, name, "Running"), 30, "Running", operator)
    first_uid = kube.job(namespace, f"{name}-trainer").metadata.uid
    kube.patch_spec(namespace, PLURAL, name, {"suspend": True})
    wait_for(phase_is(kube, namespace, name, "Paused"), 30, "Paused", operator)
    wait_for(lambda: kube.job(namespace, f"{name}-trainer") is None, 30, "trainer Job deleted", operator)
    kube.patch_spec(namespace, PLURAL, name, {"suspend": False})
    wait_for(phase_is(kube, namespace, name, "Queued"), 30, "Queued after resume", operator)
    job = wait_for(lambda: kube.job(namespace, f"{name}-trainer"), 30, "new trainer Job", operator)
    assert job.metadata.uid != first_uid
    conditions = {c["type"]: c for c in kube.status(namespace, PLURAL, name)["conditions"]}
    assert conditions["Paused"]["status"] == "False" and conditions["Paused"]["reason"] == "Resumed"


def test_queue_name_creates_suspended_kueue_job(kube: Kube, operator: Operator, namespace: str, base_model: str,
                                                store_root: Path) -> None:
    name = new_job(kube, store_root, namespace, base_model, queueName="team-a")
    wait_for(phase_is(kube, namespace, name, "Queued"), 30, "Queued", operator)
    job = kube.job(namespace, f"{name}-trainer")
    assert job.spec.suspend is True and job.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert kube.pods(namespace, f"tuneforge.io/fine-tuning-job={name}") == []


class _Hook(BaseHTTPRequestHandler):
    """A webhook receiver answering each delivery with the next of `answers` (the last
    one from then on)."""

    answers: list[int] = [204]
    received: list[tuple[dict, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append((dict(self.headers), body))
        self.send_response(_Hook.answers[min(len(_Hook.received), len(_Hook.answers)) - 1])
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    """The receiver's URL; it answers 204 unless a test sets `_Hook.answers`."""
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received, _Hook.answers = [], [204]
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def _fail_trainer(kube: Kube, namespace: str, name: str, operator: Operator) -> None:
    pod = trainer_pod(kube, namespace, name, operator)
    kube.set_pod(namespace, pod, "trainer", phase="Failed", exit_code=1, message="Traceback: boom")


def _notified(kube: Kube, namespace: str, name: str, operator: Operator) -> dict:
    return wait_for(lambda: next((c for c in kube.status(namespace, PLURAL, name).get("conditions", [])
                                  if c["type"] == "Notified"), None), 60, "Notified", operator)


def test_webhook_is_signed_and_sent_once(kube: Kube, operator: Operator, namespace: str, base_model: str,
                                         store_root: Path, hook: str) -> None:
    kube.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="hook"), data={"key": base64.b64encode(b"s3cret").decode()}))
    name = new_job(kube, store_root, namespace, base_model, notifications={
        "webhookUrl": hook, "signingSecret": {"name": "hook", "key": "key"}, "events": ["failed"]})
    _fail_trainer(kube, namespace, name, operator)
    assert _notified(kube, namespace, name, operator)["status"] == "True"
    headers, body = _Hook.received[0]
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Tuneforge-Signature"] == expected
    payload = json.loads(body)
    assert payload["type"] == "training.failed" and payload["data"]["id"] == name
    assert payload["data"]["status"] == "failed" and payload["data"]["error"]["code"] == "training_failed"
    assert len(_Hook.received) == 1


def test_webhook_is_retried_with_backoff_and_each_delivery_is_a_job_event(
        kube: Kube, operator: Operator, namespace: str, base_model: str, store_root: Path, hook: str) -> None:
    """The operator runs with 3 attempts, 1 s before the second and 2 s before the third."""
    _Hook.answers = [503, 502, 204]
    name = new_job(kube, store_root, namespace, base_model, notifications={"webhookUrl": hook})
    _fail_trainer(kube, namespace, name, operator)
    notified = _notified(kube, namespace, name, operator)
    assert (notified["status"], notified["reason"]) == ("True", "Delivered")
    assert len(_Hook.received) == 3 and len({body for _, body in _Hook.received}) == 1
    assert kube.status(namespace, PLURAL, name).get("notification") is None
    events = JobFiles.of(ArtifactStore(f"file://{store_root}"), namespace, name).platform_events()
    assert [(e["level"], e["message"]) for e in events] == [
        ("warn", "Webhook training.failed delivery 1: webhook answered 503; retrying in 1s"),
        ("warn", "Webhook training.failed delivery 2: webhook answered 502; retrying in 2s"),
        ("info", "Webhook training.failed delivery 3: webhook answered 204"),
    ]
    assert events[2]["created_at"] - events[0]["created_at"] >= 3


def test_webhook_gives_up_after_its_attempts_or_at_once_when_refused(
        kube: Kube, operator: Operator, namespace: str, base_model: str, store_root: Path, hook: str) -> None:
    _Hook.answers = [503]
    name = new_job(kube, store_root, namespace, base_model, notifications={"webhookUrl": hook})
    _fail_trainer(kube, namespace, name, operator)
    notified = _notified(kube, namespace, name, operator)
    assert (notified["status"], notified["reason"]) == ("False", "DeliveryFailed")
    assert notified["message"] == "webhook answered 503 (after 3 attempts)" and len(_Hook.received) == 3

    _Hook.received, _Hook.answers = [], [410]
    refused = new_job(kube, store_root, namespace, base_model, notifications={"webhookUrl": hook})
    _fail_trainer(kube, namespace, refused, operator)
    notified = _notified(kube, namespace, refused, operator)
    assert notified["message"] == "webhook answered 410 (after 1 attempts)" and len(_Hook.received) == 1


def test_webhook_signed_with_the_platform_key(kube: Kube, operator: Operator, namespace: str, base_model: str,
                                              store_root: Path, system_namespace: str, hook: str) -> None:
    """What the HTTP APIs create: no Secret in the namespace, a secret derived for the job."""
    name = new_job(kube, store_root, namespace, base_model,
                   notifications={"webhookUrl": hook, "signWithPlatformKey": True})
    _fail_trainer(kube, namespace, name, operator)
    assert _notified(kube, namespace, name, operator)["status"] == "True"
    key = kube.core.read_namespaced_secret(PLATFORM_KEY_SECRET, system_namespace).data[PLATFORM_KEY_FIELD]
    secret = job_signing_secret(base64.b64decode(key).decode(), namespace, name).encode()
    headers, body = _Hook.received[0]
    assert headers["X-Tuneforge-Signature"] == "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_a_webhook_names_one_signing_key(kube: Kube, namespace: str, base_model: str, store_root: Path) -> None:
    with pytest.raises(client.ApiException, match="set signingSecret or signWithPlatformKey, not both"):
        new_job(kube, store_root, namespace, base_model, notifications={
            "webhookUrl": "https://hooks.example/ft", "signWithPlatformKey": True,
            "signingSecret": {"name": "hook", "key": "key"}})


def test_hardware_profile_places_the_trainer_and_an_unknown_one_fails(kube: Kube, operator: Operator, namespace: str,
                                                                     base_model: str, store_root: Path) -> None:
    name = new_job(kube, store_root, namespace, base_model, hardware={"profile": "a100-2"})
    job = wait_for(lambda: kube.job(namespace, f"{name}-trainer"), 30, "trainer Job", operator)
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "2" and container.resources.requests["memory"] == "64Gi"
    assert pod.node_selector["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert any(t.key == "dedicated" and t.value == "ml" for t in pod.tolerations)

    bad = new_job(kube, store_root, namespace, base_model, hardware={"profile": "h100-8"})
    wait_for(phase_is(kube, namespace, bad, "Failed"), 30, "Failed", operator)
    error = kube.status(namespace, PLURAL, bad)["error"]
    assert error["code"] == "invalid_hardware_profile" and error["param"] == "hardware.profile"
    assert "offered: a100-2" in error["message"]
    assert kube.job(namespace, f"{bad}-trainer") is None
