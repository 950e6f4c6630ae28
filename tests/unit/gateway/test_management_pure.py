"""Pure pieces of the management API: status mapping, job shapes, the list query, metrics,
log parsing, the cost estimate, deployments and the calling key."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tuneforge.config import HardwareProfile
from tuneforge.gateway.auth import Principal
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.fine_tuning_service import named_file_id
from tuneforge.gateway.management import estimate as est
from tuneforge.gateway.management.caller import caller_key
from tuneforge.gateway.management.catalog_views import (
    base_model_entry,
    gigabytes,
    hardware_entry,
    human_count,
)
from tuneforge.gateway.management.deployment_views import deployment_entry
from tuneforge.gateway.management.estimate import AVERAGE_TOKENS_PER_EXAMPLE, DatasetSize, dataset_size
from tuneforge.gateway.management.job_queries import ListQuery, parse_sort, parse_statuses, select_jobs, stats
from tuneforge.gateway.management.job_status import job_status
from tuneforge.gateway.management.job_views import (
    deployed_job,
    hyperparameters,
    job_detail,
    restarted_job,
    stopped_job,
    updated_at,
)
from tuneforge.gateway.management.learning_rate import learning_rate_multiplier
from tuneforge.gateway.management.log_entries import event_log_entries, newest_pod, pod_log_entries
from tuneforge.gateway.management.training_metrics import metrics_view, total_epochs
from tuneforge.gateway.openai_protocol import FileObject
from tuneforge.gateway.times import parse_time


def job(name: str, *, phase: str | None = None, created: str = "2030-01-01T00:00:00Z", spec: dict | None = None,
        status: dict | None = None, managed: list[str] = ()) -> dict:
    return {
        "metadata": {"name": name, "namespace": "team", "creationTimestamp": created,
                     "managedFields": [{"manager": "m", "time": t} for t in managed],
                     "annotations": {"tuneforge.io/created-by": "tuneforge-apikey-abc"}},
        "spec": {"baseModel": "tiny", "trainingFile": "file-abcdefgh", **(spec or {})},
        "status": {**({"phase": phase} if phase else {}), **(status or {})},
    }


@pytest.mark.parametrize(("phase", "spec", "status", "expected"), [
    (None, {}, {}, "queued"),
    ("ValidatingFiles", {}, {}, "queued"),
    ("Queued", {}, {}, "queued"),
    ("Running", {}, {}, "running"),
    ("Running", {"suspend": True}, {}, "stopped"),
    ("Paused", {"suspend": True}, {}, "stopped"),
    ("Paused", {"suspend": False}, {}, "queued"),
    ("Queued", {"cancel": True}, {}, "stopped"),
    ("Cancelled", {"cancel": True}, {}, "stopped"),
    ("Succeeded", {}, {}, "completed"),
    ("Failed", {}, {}, "failed"),
    ("Failed", {"restartCount": 1}, {}, "queued"),
    ("Failed", {"restartCount": 1}, {"restarts": 1}, "failed"),
    ("Failed", {"restartCount": 2, "cancel": True}, {"restarts": 1}, "failed"),
])
def test_status_mapping(phase, spec, status, expected) -> None:
    assert job_status(job("ftjob-a", phase=phase, spec=spec, status=status)) == expected


def test_detail_converts_learning_rate_and_prefers_resolved_values() -> None:
    requested = job("ftjob-a", spec={"displayName": "Support bot", "hyperparameters": {
        "nEpochs": 2, "learningRateMultiplier": learning_rate_multiplier(3e-4), "warmupSteps": 5}})
    assert learning_rate_multiplier(3e-4) == 1.5
    assert hyperparameters(requested).model_dump() == {"epochs": 2, "learningRate": 3e-4, "batchSize": "auto", "warmupSteps": 5,
                                          "warmupRatio": None}
    done = job("ftjob-a", phase="Succeeded", status={
        "hyperparameters": {"nEpochs": 3, "batchSize": 1, "learningRateMultiplier": 0.5}, "fineTunedModel": "ft:x",
        "trainedTokens": 900, "metrics": {"trainLoss": 0.5}, "progress": {"epoch": 3.0, "step": 30, "totalSteps": 30},
        "error": None})
    detail = job_detail(done, {"file-abcdefgh": "support.jsonl"}).model_dump()
    assert detail["hyperparameters"]["learningRate"] == 1e-4 and detail["hyperparameters"]["batchSize"] == 1
    assert detail["hyperparameters"]["warmupRatio"] == 0.03
    assert (detail["resultModel"], detail["trainedTokens"], detail["status"]) == ("ft:x", 900, "completed")
    assert detail["metrics"] == {"trainingLoss": 0.5, "validationLoss": None, "epoch": 3.0}
    assert detail["name"] == "ftjob-a" and detail["owner"] == "tuneforge-apikey-abc"
    assert (detail["trainingDataset"], detail["trainingFile"]) == ("file-abcdefgh", "support.jsonl")
    assert (detail["validationDataset"], detail["validationFile"]) == (None, None)
    assert job_detail(requested, {}).name == "Support bot"


def test_updated_at_is_the_newest_write() -> None:
    assert updated_at(job("a")) == "2030-01-01T00:00:00Z"
    assert updated_at(job("a", managed=["2030-01-01T00:00:05Z", "2030-01-01T00:01:00Z"])) == "2030-01-01T00:01:00Z"


def _jobs() -> list[dict]:
    return [
        job("ftjob-1", phase="Running", created="2030-01-01T00:00:01Z", spec={"displayName": "beta run"}),
        job("ftjob-2", phase="Succeeded", created="2030-01-01T00:00:02Z",
            spec={"displayName": "Alpha", "description": "Support tickets", "baseModel": "other"}),
        job("ftjob-3", phase="Failed", created="2030-01-01T00:00:03Z", spec={"displayName": "gamma"}),
        job("ftjob-4", phase="Paused", created="2030-01-01T00:00:03Z", spec={"suspend": True},
            managed=["2030-01-02T00:00:00Z"]),
        job("ftjob-5", phase="Queued", created="2030-01-01T00:00:05Z", spec={"displayName": "delta"}),
    ]


def _ids(query: ListQuery) -> list[str]:
    return [r["metadata"]["name"] for r in select_jobs(_jobs(), query)[1]]


def test_filters_search_sort_and_pages() -> None:
    assert _ids(ListQuery()) == ["ftjob-5", "ftjob-4", "ftjob-3", "ftjob-2", "ftjob-1"]
    assert _ids(ListQuery(descending=False)) == ["ftjob-1", "ftjob-2", "ftjob-3", "ftjob-4", "ftjob-5"]
    assert _ids(ListQuery(statuses=frozenset({"stopped", "failed"}))) == ["ftjob-4", "ftjob-3"]
    assert _ids(ListQuery(base_model="other")) == ["ftjob-2"]
    assert _ids(ListQuery(search="SUPPORT")) == ["ftjob-2"]
    assert _ids(ListQuery(search="alp")) == ["ftjob-2"]
    assert _ids(ListQuery(sort_field="name", descending=False)) == ["ftjob-2", "ftjob-1", "ftjob-5", "ftjob-4",
                                                                   "ftjob-3"]
    assert _ids(ListQuery(sort_field="status", descending=False)) == ["ftjob-2", "ftjob-3", "ftjob-5", "ftjob-1",
                                                                     "ftjob-4"]
    assert _ids(ListQuery(sort_field="updatedAt"))[0] == "ftjob-4"
    count, page = select_jobs(_jobs(), ListQuery(limit=2, offset=4))
    assert count == 5 and [r["metadata"]["name"] for r in page] == ["ftjob-1"]
    assert select_jobs(_jobs(), ListQuery(offset=99)) == (5, [])
    assert stats(_jobs()).model_dump() == {"total": 5, "queued": 1, "running": 1, "completed": 1, "failed": 1, "stopped": 1}


@pytest.mark.parametrize("value", ["foo", "name:up", "createdAt:", "status:desc:x", ""])
def test_bad_sort_is_400(value: str) -> None:
    with pytest.raises(OpenAIError) as exc:
        parse_sort(value)
    assert exc.value.status == 400 and exc.value.param == "sort"


def test_sort_and_status_parsing() -> None:
    assert parse_sort("name") == ("name", True) and parse_sort("updatedAt:asc") == ("updatedAt", False)
    assert parse_statuses("queued, running") == {"queued", "running"}
    for value in ("paused", "", ","):
        with pytest.raises(OpenAIError):
            parse_statuses(value)
    assert parse_time("2030-01-01T00:00:00", "since") == datetime(2030, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(OpenAIError) as exc:
        parse_time("yesterday", "since")
    assert exc.value.param == "since"


def test_metrics_curve_reads_latest() -> None:
    records = [{"step": 1, "train_loss": 2.0, "learning_rate": 1e-4, "epoch": 0.5, "trained_tokens": 10},
               {"step": 2, "train_loss": 1.5, "full_valid_loss": 1.7, "learning_rate": 2e-4, "epoch": 1.0,
                "tokens_per_second": 812.5}]
    view = metrics_view(job("ftjob-a", phase="Running", status={"trainedTokens": 40, "progress": {
        "step": 2, "epoch": 1.0, "totalSteps": 6}}), records).model_dump()
    assert view["jobId"] == "ftjob-a"
    view = view["metrics"]
    assert view["trainingLoss"] == 1.5 and view["validationLoss"] == 1.7 and view["currentEpoch"] == 1.0
    assert view["totalEpochs"] == 3 and view["trainedTokens"] == 40
    assert view["steps"][1] == {"step": 2, "trainingLoss": 1.5, "validationLoss": 1.7, "learningRate": 2e-4,
                                "tokensPerSecond": 812.5}
    assert view["steps"][0]["tokensPerSecond"] is None
    empty = metrics_view(job("ftjob-a", status={"metrics": {"trainLoss": 0.9}}), []).model_dump()["metrics"]
    assert empty["trainingLoss"] == 0.9 and empty["steps"] == [] and empty["totalEpochs"] is None
    assert total_epochs(job("a", spec={"hyperparameters": {"nEpochs": 4}})) == 4


def test_pod_log_lines_get_levels_and_since() -> None:
    text = ("2030-01-01T00:00:00.123456789Z Loading model\n"
            "2030-01-01T00:00:01.5Z WARNING:accelerate: mixed precision unavailable\n"
            "2030-01-01T00:00:02Z Traceback (most recent call last)\n"
            '2030-01-01T00:00:03Z {"code": "training_failed", "message": "boom", "param": null}\n'
            '2030-01-01T00:00:04Z {"level": "debug", "msg": "x"}\n\n')
    entries = [entry.model_dump() for entry in pod_log_entries(text)]
    assert [e["level"] for e in entries] == ["info", "warning", "error", "error", "debug"]
    assert entries[0] == {"timestamp": "2030-01-01T00:00:00.123456789Z", "level": "info", "message": "Loading model"}
    since = datetime(2030, 1, 1, 0, 0, 1, 400000, tzinfo=timezone.utc)
    assert [e.message[:7] for e in pod_log_entries(text, since=since)] == ["WARNING", "Traceba", '{"code"',
                                                                               '{"level']


def test_event_log_entries_and_pod_choice() -> None:
    events = [{"created_at": 1893456000 + i, "level": level, "message": f"m{i}"}
              for i, level in enumerate(["info", "warn", "error"])]
    assert [entry.model_dump() for entry in event_log_entries(events, since=None, lines=2)] == [
        {"timestamp": "2030-01-01T00:00:01Z", "level": "warning", "message": "m1"},
        {"timestamp": "2030-01-01T00:00:02Z", "level": "error", "message": "m2"}]
    assert [e.message for e in event_log_entries(events, since=datetime(2030, 1, 1, 0, 0, 1, tzinfo=timezone.utc),
                                                    lines=10)] == ["m1", "m2"]
    pods = [{"metadata": {"name": "a", "creationTimestamp": "2030-01-01T00:00:00Z"}},
            {"metadata": {"name": "b", "creationTimestamp": "2030-01-01T00:00:09Z", "deletionTimestamp": "x"}},
            {"metadata": {"name": "c", "creationTimestamp": "2030-01-01T00:00:05Z"}}]
    assert newest_pod(pods)["metadata"]["name"] == "c" and newest_pod([]) is None


GPU = HardwareProfile(name="a100", gpu_count=1, gpu_memory_gb=80, cost_per_hour=2.0)
CPU = HardwareProfile(name="cpu", gpu_count=0, cost_per_hour=None, currency="EUR")


def test_nominal_estimate_follows_the_documented_formula() -> None:
    result = est.estimate(base_model="tiny", parameter_count=135_000_000, dataset_tokens=1_000_000, epochs=3,
                          profile=GPU, samples=[])
    tokens_per_second = 1e14 / (6 * 135_000_000)
    assert result.basis == "nominal" and result.total_tokens == 3_000_000
    assert result.tokens_per_second == pytest.approx(tokens_per_second)
    assert result.seconds == pytest.approx(3_000_000 / tokens_per_second)
    assert result.minutes() == 0.5 and result.rounded_cost() == 0.02
    cpu = est.estimate(base_model="tiny", parameter_count=135_000_000, dataset_tokens=1_000_000, epochs=1,
                       profile=CPU, samples=[])
    assert cpu.rounded_cost() is None and cpu.currency == "EUR"
    assert cpu.seconds == pytest.approx(1_000_000 / (5e10 / (6 * 135_000_000)))


def test_estimate_calibrates_from_finished_jobs() -> None:
    same = [est.Sample("tiny", 600_000, 600.0, 135_000_000), est.Sample("tiny", 300_000, 100.0, 135_000_000),
            est.Sample("tiny", 1_000, 1.0, 135_000_000)]
    result = est.estimate(base_model="tiny", parameter_count=None, dataset_tokens=1_000_000, epochs=3, profile=GPU,
                          samples=same)
    assert result.basis == "calibrated-same-model" and result.samples == 3
    assert result.tokens_per_second == 1000 and result.minutes() == 50.0 and result.rounded_cost() == 1.67
    other = [est.Sample("big", 1_000, 1.0, 1_350_000_000)]
    scaled = est.estimate(base_model="tiny", parameter_count=135_000_000, dataset_tokens=10, epochs=1, profile=GPU,
                          samples=other)
    assert scaled.basis == "calibrated-profile" and scaled.tokens_per_second == pytest.approx(10_000)
    with pytest.raises(est.EstimateError):
        est.estimate(base_model="tiny", parameter_count=None, dataset_tokens=10, epochs=1, profile=GPU, samples=other)


def test_calibration_uses_succeeded_jobs_on_the_same_profile() -> None:
    base = {"tiny": {"spec": {"parameterCount": 100, "defaultHardware": "a100"}}}
    done = {"phase": "Succeeded", "trainedTokens": 1000, "startedAt": "2030-01-01T00:00:00Z",
            "finishedAt": "2030-01-01T00:00:10Z"}
    jobs = [job("ok", status=done), job("running", phase="Running", status={**done, "phase": "Running"}),
            job("other-profile", status=done, spec={"hardware": {"profile": "cpu"}}),
            job("override", status=done, spec={"hardware": {"profile": "a100", "gpuCount": 8}}),
            job("unknown-base", status=done, spec={"baseModel": "gone"})]
    samples = est.calibration_samples(jobs, base, profile="a100", default=None)
    assert samples == [est.Sample("tiny", 1000, 10.0, 100)]
    assert est.estimate_profile({"serving": {"hardware": {"profile": "x"}}}, "d") == "x"
    assert est.estimate_profile({}, "d") == "d"


@pytest.mark.parametrize(("count", "human"), [
    (134_515_008, "135M"), (1_711_376_384, "1.71B"), (8_000_000_000, "8B"), (70_553_706_496, "70.6B"),
    (405_000_000_000, "405B"), (2_000_000_000_000, "2T"), (999, "999"), (None, None),
    (999_999_999, "1B"), (999_500, "1M"), (1_500, "1.5K")])
def test_parameter_counts_as_catalogs_write_them(count, human) -> None:
    assert human_count(count) == human


def test_base_model_entries_as_the_catalog_shows_them() -> None:
    smollm = {"metadata": {"name": "smollm2-135m"}, "spec": {
        "modelId": "HuggingFaceTB/SmolLM2-135M-Instruct", "parameterCount": 134_515_008, "maxContextLength": 8192}}
    entry = base_model_entry(smollm).model_dump()
    assert (entry["id"], entry["name"], entry["provider"]) == ("HuggingFaceTB/SmolLM2-135M-Instruct",) * 2 + (
        "HuggingFaceTB",)
    assert (entry["parameterCount"], entry["parameters"], entry["maxSequenceLength"]) == ("135M", 134_515_008, 8192)
    named = {"metadata": {"name": "tiny"}, "spec": {"provider": "acme", "displayName": "Tiny"}}
    entry = base_model_entry(named).model_dump()
    assert (entry["id"], entry["name"], entry["provider"], entry["parameterCount"]) == ("tiny", "Tiny", "acme", None)
    assert base_model_entry({"metadata": {"name": "tiny"}, "spec": {}}).provider is None


def test_hardware_entries_write_gpu_memory_as_catalogs_do() -> None:
    a100 = HardwareProfile(name="gpu-a100-40gb", display_name="NVIDIA A100 40GB", gpu_count=1, gpu_memory_gb=40,
                           cost_per_hour=3.5)
    entry = hardware_entry(a100, "gpu-a100-40gb").model_dump()
    assert (entry["gpuMemory"], entry["gpuMemoryGb"], entry["gpuCount"], entry["costPerHour"]) == ("40GB", 40, 1, 3.5)
    assert entry["default"] is True and (gigabytes(23.5), gigabytes(None)) == ("23.5GB", None)
    cpu = hardware_entry(HardwareProfile(name="cpu", gpu_count=0, cost_per_hour=0), "gpu-a100-40gb").model_dump()
    assert (cpu["name"], cpu["gpuMemory"], cpu["costPerHour"], cpu["default"]) == ("cpu", None, 0, False)


def _upload(file_id: str, created_at: int, status: str = "processed") -> FileObject:
    return FileObject(id=file_id, bytes=10, created_at=created_at, filename="train.jsonl", purpose="fine-tune",
                      status=status)


def test_a_file_name_means_its_only_upload_or_its_only_valid_one() -> None:
    first, second = _upload("file-aaaaaaaa", 1), _upload("file-bbbbbbbb", 2)
    assert named_file_id("train.jsonl", [first], "trainingDataset") == "file-aaaaaaaa"
    assert named_file_id("train.jsonl", [_upload("file-aaaaaaaa", 1, "error")], "trainingDataset") == "file-aaaaaaaa"
    assert named_file_id("train.jsonl", [_upload("file-aaaaaaaa", 1, "error"), second], "x") == "file-bbbbbbbb"
    with pytest.raises(OpenAIError) as ambiguous:
        named_file_id("train.jsonl", [first, second], "validationFile")
    assert (ambiguous.value.status, ambiguous.value.param, ambiguous.value.code) == (
        400, "validationFile", "ambiguous_file_name")
    assert "file-aaaaaaaa, file-bbbbbbbb" in ambiguous.value.message
    with pytest.raises(OpenAIError) as unknown:
        named_file_id("train.jsonl", [], "trainingDataset")
    assert (unknown.value.status, unknown.value.param, unknown.value.code) == (400, "trainingDataset", "invalid_file")


def test_stop_restart_and_deploy_answers_carry_the_documented_fields() -> None:
    running = job("ftjob-a", phase="Running", spec={"suspend": True})
    stopped = stopped_job(running, {}).model_dump()
    assert (stopped["id"], stopped["status"], stopped["message"]) == (
        "ftjob-a", "stopped", "Fine-tuning job stopped successfully")
    restarted = restarted_job(job("ftjob-a", phase="Paused"), {}, 40).model_dump()
    assert (restarted["status"], restarted["message"], restarted["resumeFromStep"]) == (
        "queued", "Fine-tuning job restarted successfully", 40)
    deployment = {"metadata": {"name": "shared", "namespace": "tuneforge-system"}, "status": {"phase": "Ready"}}
    deployed = deployed_job("ftjob-a", "ft:tiny:team:s:ftjob-a", deployment, shared=True).model_dump()
    assert {k: deployed[k] for k in ("id", "resultModel", "status", "message")} == {
        "id": "ftjob-a", "resultModel": "ft:tiny:team:s:ftjob-a", "status": "deployed",
        "message": "Fine-tuned model deployed successfully"}
    assert deployed["loadedOnDemand"] is True and deployed["deployment"]["phase"] == "Ready"


def test_dataset_tokens_from_the_caller_the_file_or_the_average() -> None:
    assert dataset_size(examples=50_000, tokens=None) == DatasetSize(50_000, 50_000 * AVERAGE_TOKENS_PER_EXAMPLE,
                                                                     AVERAGE_TOKENS_PER_EXAMPLE, "average-example")
    assert dataset_size(examples=100, tokens=12_000) == DatasetSize(100, 12_000, 120.0, "given")
    assert dataset_size(examples=None, tokens=12_000) == DatasetSize(None, 12_000, None, "given")
    # 10 examples of 3 messages and 400 characters each: 100 text tokens + 12 template tokens.
    measured = dataset_size(examples=None, tokens=None, file_examples=10, file_characters=4000, file_messages=30)
    assert measured == DatasetSize(10, 1120, 112.0, "training-file")
    scaled = dataset_size(examples=50_000, tokens=None, file_examples=10, file_characters=4000, file_messages=30)
    assert (scaled.examples, scaled.tokens, scaled.basis) == (50_000, 5_600_000, "training-file")


def mdep(name: str, *, spec: dict | None = None, status: dict | None = None) -> dict:
    return {"metadata": {"name": name, "namespace": "team", "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": {"baseModel": "smollm2-135m", **(spec or {})}, **({"status": status} if status else {})}


def _available(ready: bool, reason: str, message: str) -> list[dict]:
    return [{"type": "Available", "status": str(ready), "reason": reason, "message": message},
            {"type": "Progressing", "status": str(not ready), "reason": reason, "message": message}]


def test_deployment_entries_say_what_is_served_and_why_not_ready() -> None:
    ready = deployment_entry(mdep("support", spec={"replicas": 2}, status={
        "phase": "Ready", "replicas": 2, "readyReplicas": 2, "servedModels": ["HuggingFaceTB/SmolLM2-135M-Instruct",
                                                                              "ft:x:team:s:ftjob-a"],
        "conditions": _available(True, "PodsReady", "2/2 Pods of the current spec ready")}),
        base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct").model_dump()
    assert ready == {"name": "support", "namespace": "team", "shared": False, "baseModel": "HuggingFaceTB/SmolLM2-135M-Instruct", "phase": "Ready",
                     "replicas": 2, "readyReplicas": 2,
                     "servedModels": ["HuggingFaceTB/SmolLM2-135M-Instruct", "ft:x:team:s:ftjob-a"],
                     "message": None, "createdAt": "2030-01-01T00:00:00Z"}
    rolling = deployment_entry(mdep("support", status={
        "phase": "Deploying", "replicas": 1, "readyReplicas": 0, "servedModels": ["m"],
        "conditions": [*_available(False, "RollingOut", "0/1 Pods of the current spec ready"),
                       {"type": "PodsAdmitted", "status": "True", "reason": "Admitted", "message": ""}]}),
        base_model_id="m").model_dump()
    assert (rolling["phase"], rolling["replicas"], rolling["readyReplicas"], rolling["message"]) == (
        "Deploying", 1, 0, "0/1 Pods of the current spec ready")
    refusal = ('pods "support-7d9c-x" is forbidden: violates PodSecurity "restricted:latest": '
               'allowPrivilegeEscalation != false')
    refused = deployment_entry(mdep("support", status={
        "phase": "Deploying", "replicas": 1, "readyReplicas": 0, "servedModels": ["m"],
        "conditions": [*_available(False, "RollingOut", "0/1 Pods of the current spec ready"),
                       {"type": "PodsAdmitted", "status": "False", "reason": "PodCreationRefused",
                        "message": refusal}]}),
        base_model_id="m").model_dump()
    assert refused["message"] == refusal
    new = deployment_entry(mdep("fresh"), base_model_id="smollm2-135m").model_dump()
    assert deployment_entry(mdep("fresh"), base_model_id="m", shared=True).shared
    assert (new["phase"], new["replicas"], new["readyReplicas"], new["servedModels"], new["message"]) == (
        "Pending", 1, 0, [], None)


def test_autoscaled_deployments_want_the_autoscalers_replicas() -> None:
    autoscaling = {"minReplicas": 0, "maxReplicas": 3}
    idle = deployment_entry(mdep("chat", spec={"replicas": 5, "autoscaling": autoscaling}, status={
        "phase": "Pending", "replicas": 0, "readyReplicas": 0, "servedModels": ["m"],
        "autoscaling": {"currentReplicas": 0, "desiredReplicas": 0, "load": 0.0, "reason": "idle"},
        "conditions": _available(False, "ScaledToZero", "0/0 Pods of the current spec ready")}),
        base_model_id="m").model_dump()
    assert (idle["phase"], idle["replicas"], idle["readyReplicas"], idle["message"]) == (
        "Pending", 0, 0, "0/0 Pods of the current spec ready")
    undecided = deployment_entry(mdep("chat", spec={"autoscaling": autoscaling}), base_model_id="m")
    assert undecided.replicas == 1  # the initial scale, before the autoscaler's first decision
    narrowed = deployment_entry(mdep("chat", spec={"autoscaling": {"minReplicas": 1, "maxReplicas": 2}}, status={
        "autoscaling": {"desiredReplicas": 3}}), base_model_id="m")
    assert narrowed.replicas == 2


def test_the_calling_key_spells_out_its_scopes() -> None:
    full = caller_key(Principal(tenant="team", scopes=frozenset({"*"}), key_name="tuneforge-apikey-abc")).model_dump()
    assert full == {"name": "tuneforge-apikey-abc", "tenant": "team", "scopes": [
        "batches:read", "batches:write", "chat", "files:read", "files:write", "fine-tuning:read", "fine-tuning:write",
        "models:read"]}
    reader = caller_key(Principal(tenant="team", scopes=frozenset({"fine-tuning:*", "models:read"})))
    assert reader.scopes == ["fine-tuning:read", "fine-tuning:write", "models:read"]
