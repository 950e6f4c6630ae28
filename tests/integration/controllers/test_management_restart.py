"""Restarting fine-tuning jobs with the operator running: spec.restartCount on a Failed job
(a new trainer Job, error cleared, re-queued, resuming from the store's checkpoints; a job
that failed validation is validated again), and the management API's stop -> restart and
failed -> restart over real HTTP against the same resources."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client

from tuneforge.contracts import TrainingRun
from tuneforge.gateway import keys
from tuneforge.gateway.app import create_app
from tuneforge.local.controlplane import free_port
from tuneforge.storage import ArtifactStore

from tests.integration.gateway.gateway_testkit import ServerThread, training_lines
from tests.support.apiserver import Kube, wait_for
from tests.support.operator_process import Operator
from tests.support.store_layout import chat_example, upload

pytestmark = pytest.mark.integration
PLURAL = "finetuningjobs"
API = "/api/v1/fine-tuning"


def phase(kube: Kube, namespace: str, name: str) -> str | None:
    return kube.status(namespace, PLURAL, name).get("phase")


def trainer_pod(kube: Kube, namespace: str, name: str, operator: Operator, not_named: str = "") -> str:
    pods = wait_for(lambda: [p for p in kube.pods(namespace, f"tuneforge.io/fine-tuning-job={name}")
                             if p.metadata.name != not_named], 30, "trainer Pod", operator)
    return pods[0].metadata.name


def fail_trainer(kube: Kube, namespace: str, name: str, operator: Operator, not_named: str = "") -> str:
    pod = trainer_pod(kube, namespace, name, operator, not_named)
    message = json.dumps({"code": "training_failed", "message": "CUDA out of memory", "param": None})
    kube.set_pod(namespace, pod, "trainer", phase="Failed", exit_code=1, message=message)
    wait_for(lambda: phase(kube, namespace, name) == "Failed", 60, "Failed", operator)
    return pod


def complete_checkpoint(store_root: Path, namespace: str, name: str, step: int) -> None:
    """What the trainer leaves behind: a checkpoint directory with its COMPLETE marker."""
    directory = store_root / namespace / "fine-tuning" / name / "checkpoints" / f"step-{step}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "COMPLETE").write_text("")


def run_spec(kube: Kube, namespace: str, name: str) -> TrainingRun:
    return TrainingRun.model_validate_json(kube.core.read_namespaced_config_map(f"{name}-run", namespace).data["run.json"])


def restarted_events(kube: Kube, namespace: str, name: str) -> list[str]:
    return [e.message for e in kube.core.list_namespaced_event(namespace).items
            if e.involved_object.name == name and e.reason == "Restarted"]


def test_restart_count_replaces_the_failed_trainer(kube: Kube, operator: Operator, namespace: str, base_model: str,
                                                   store_root: Path) -> None:
    upload(store_root, namespace, "file-restart00001", [chat_example(i) for i in range(12)])
    name = f"ftjob-{uuid.uuid4().hex[:10]}"
    kube.create(namespace, PLURAL, {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
                                    "metadata": {"name": name},
                                    "spec": {"baseModel": base_model, "trainingFile": "file-restart00001"}})
    failed_pod = fail_trainer(kube, namespace, name, operator)
    failed_uid = kube.job(namespace, f"{name}-trainer").metadata.uid
    assert kube.status(namespace, PLURAL, name)["error"]["message"] == "CUDA out of memory"
    complete_checkpoint(store_root, namespace, name, 6)

    kube.patch_spec(namespace, PLURAL, name, {"restartCount": 1})
    wait_for(lambda: phase(kube, namespace, name) == "Queued", 60, "Queued after restart", operator)
    status = kube.status(namespace, PLURAL, name)
    assert status["restarts"] == 1 and "error" not in status and "finishedAt" not in status
    job = wait_for(lambda: kube.job(namespace, f"{name}-trainer"), 30, "new trainer Job", operator)
    assert job.metadata.uid != failed_uid
    run = run_spec(kube, namespace, name)
    assert (Path(run.output_uri.removeprefix("file://")) / "checkpoints" / "step-6" / "COMPLETE").exists()
    assert restarted_events(kube, namespace, name)

    # The new run proceeds like any other; a second failure needs a second request.
    pod = trainer_pod(kube, namespace, name, operator, not_named=failed_pod)
    kube.set_pod(namespace, pod, "trainer", phase="Running")
    wait_for(lambda: phase(kube, namespace, name) == "Running", 30, "Running", operator)
    fail_trainer(kube, namespace, name, operator, not_named=failed_pod)
    assert kube.status(namespace, PLURAL, name)["restarts"] == 1


def test_restart_after_failed_validation_validates_again(kube: Kube, operator: Operator, namespace: str,
                                                         base_model: str, store_root: Path) -> None:
    upload(store_root, namespace, "file-toofew000001", [chat_example(i) for i in range(3)])
    name = f"ftjob-{uuid.uuid4().hex[:10]}"
    kube.create(namespace, PLURAL, {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
                                    "metadata": {"name": name},
                                    "spec": {"baseModel": base_model, "trainingFile": "file-toofew000001"}})
    wait_for(lambda: phase(kube, namespace, name) == "Failed", 30, "Failed validation", operator)
    assert kube.status(namespace, PLURAL, name)["error"]["code"] == "invalid_n_examples"
    upload(store_root, namespace, "file-toofew000001", [chat_example(i) for i in range(12)])
    kube.patch_spec(namespace, PLURAL, name, {"restartCount": 1})
    wait_for(lambda: phase(kube, namespace, name) == "Queued", 60, "Queued after revalidation", operator)
    assert kube.job(namespace, f"{name}-trainer") is not None


@pytest.fixture
def gateway_url(api_client: client.ApiClient, store_root: Path, operator: Operator) -> Iterator[str]:
    """The gateway on the operator's artifact store, so both see the same job directories."""
    port = free_port()
    with ServerThread(create_app(api_client=api_client, store=ArtifactStore(f"file://{store_root}")), port):
        yield f"http://127.0.0.1:{port}"


def test_management_stop_restart_and_failed_restart(kube: Kube, operator: Operator, namespace: str, base_model: str,
                                                    store_root: Path, api_client: client.ApiClient,
                                                    gateway_url: str) -> None:
    key = keys.create_key(api_client, namespace=namespace, scopes=["*"])
    with httpx.Client(base_url=gateway_url, headers={"X-API-Key": key}, timeout=30) as http:
        file_id = http.post("/v1/files", files={"file": ("t.jsonl", training_lines(12))},
                            data={"purpose": "fine-tune"}).json()["id"]
        created = http.post(f"{API}/jobs", json={"name": "resumable", "baseModel": base_model,
                                                 "trainingDataset": file_id,
                                                 "hyperparameters": {"epochs": 2, "warmupSteps": 4}})
        assert created.status_code == 201, created.text
        name = created.json()["id"]

        def status() -> str:
            return http.get(f"{API}/jobs/{name}").json()["status"]

        pod = trainer_pod(kube, namespace, name, operator)
        kube.set_pod(namespace, pod, "trainer", phase="Running")
        wait_for(lambda: status() == "running", 30, "running", operator)
        first_uid = kube.job(namespace, f"{name}-trainer").metadata.uid
        complete_checkpoint(store_root, namespace, name, 3)

        stopped = http.post(f"{API}/jobs/{name}/stop").json()
        assert stopped["status"] == "stopped"
        wait_for(lambda: phase(kube, namespace, name) == "Paused", 30, "Paused", operator)
        wait_for(lambda: kube.job(namespace, f"{name}-trainer") is None, 30, "trainer Job deleted", operator)
        assert status() == "stopped"

        restarted = http.post(f"{API}/jobs/{name}/restart").json()
        assert restarted["status"] == "queued" and restarted["resumeFromStep"] == 3
        job = wait_for(lambda: kube.job(namespace, f"{name}-trainer"), 30, "trainer Job after restart", operator)
        assert job.metadata.uid != first_uid
        wait_for(lambda: phase(kube, namespace, name) == "Queued", 30, "Queued", operator)
        run = run_spec(kube, namespace, name)
        assert (Path(run.output_uri.removeprefix("file://")) / "checkpoints" / "step-3" / "COMPLETE").exists()
        assert (run.hyperparameters.n_epochs, run.hyperparameters.warmup_steps) == (2, 4)

        failed_pod = fail_trainer(kube, namespace, name, operator, not_named=pod)
        failed = http.get(f"{API}/jobs/{name}").json()
        assert failed["status"] == "failed" and failed["error"]["message"] == "CUDA out of memory"
        again = http.post(f"{API}/jobs/{name}/restart").json()
        assert again["status"] == "queued" and again["resumeFromStep"] == 3
        wait_for(lambda: kube.status(namespace, PLURAL, name).get("restarts") == 1, 60, "restart acted on", operator)
        wait_for(lambda: phase(kube, namespace, name) == "Queued", 30, "Queued after failure", operator)
        new_pod = trainer_pod(kube, namespace, name, operator, not_named=failed_pod)
        assert new_pod not in (pod, failed_pod)
        detail = http.get(f"{API}/jobs/{name}").json()
        assert (detail["status"], detail["error"], detail["restarts"]) == ("queued", None, 1)
        assert http.get(f"/v1/fine_tuning/jobs/{name}").json()["status"] == "queued"
