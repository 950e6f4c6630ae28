"""Multi-GPU and multi-node training, control-plane side: the strategy choice, the
DistributedSettings of the run, the trainer Job of a group, its headless Service, and how a
failed group is read. All pure."""

from __future__ import annotations

import re

import pytest

from tuneforge.api.sizing import size_training
from tuneforge.api.v1alpha1 import BaseModelResource, FineTuningJobResource
from tuneforge.api.v1alpha1.common import DNS_LABEL_PATTERN, MAX_NODES, SERVICE_NAME_PATTERN
from tuneforge.config import HardwareProfile, Settings
from tuneforge.contracts import RENDEZVOUS_PORT, TrainerExit
from tuneforge.controllers import builders
from tuneforge.controllers.children import GroupFailure, failed_first, group_failure, job_summary, pod_summary

SETTINGS = Settings(store_root="pvc://store/root", trainer_image="trainer:1", hardware_profiles=[
    HardwareProfile(name="a100x8", gpu_count=8, gpu_memory_gb=80, max_nodes=4, shared_memory="16Gi",
                    env={"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_DISABLE": "0"}),
    HardwareProfile(name="l4x4", gpu_count=4, gpu_memory_gb=24),
    HardwareProfile(name="cpu", cpu="4", memory="16Gi"),
])
BILLION = 10**9


def resources(parameter_count: int | None = None, **spec: object) -> tuple[dict, FineTuningJobResource,
                                                                           BaseModelResource]:
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
            "metadata": {"name": "ftjob-abc", "namespace": "team", "uid": "u-ft"},
            "spec": {"baseModel": "m", "trainingFile": "file-1234abcd", **spec}}
    base = {"source": {"uri": "s3://models/m"}}
    if parameter_count:
        base["parameterCount"] = parameter_count
    return (body, FineTuningJobResource.model_validate(body),
            BaseModelResource.model_validate({"kind": "BaseModel", "metadata": {"name": "m"}, "spec": base}))


def distributed(parameter_count: int | None = None, **spec: object):
    _, ft, base = resources(parameter_count, **spec)
    return builders.resolve_distributed(ft, base, size_training(ft.spec, base.spec, SETTINGS))


def render(parameter_count: int | None = None, **spec: object) -> tuple[dict, dict]:
    body, ft, base = resources(parameter_count, **spec)
    size = size_training(ft.spec, base.spec, SETTINGS)
    run = builders.training_run(ft, base, training_uri="s3://t", validation_uri=None, store_root="s3://store",
                                distributed=builders.resolve_distributed(ft, base, size))
    return body, builders.trainer_job(body, run, hardware=size.hardware, settings=SETTINGS)


# -- the strategy ------------------------------------------------------------------------


def test_memory_estimate_follows_the_documented_formula() -> None:
    p = 7 * BILLION
    width = (128 * p / 12) ** (1 / 3)
    assert builders.training_memory_bytes(p, 2048) == pytest.approx(2 * p + 34 * p / (12 * width) * 2048)
    assert 23e9 < builders.training_memory_bytes(p, 2048) < 25e9  # 14 GB weights + ~9.6 GB activations
    assert builders.training_memory_bytes(p, 2048, 2) > builders.training_memory_bytes(p, 2048)


@pytest.mark.parametrize("parameters,gpu_gb,seq,fits", [
    (8 * BILLION, 80, 2048, True),
    (70 * BILLION, 80, 2048, False),
    (7 * BILLION, 24, 2048, False),
    (7 * BILLION, 24, 512, True),
    (None, 24, 2048, True),
    (70 * BILLION, None, 2048, True),
])
def test_fits_one_gpu(parameters: int | None, gpu_gb: float | None, seq: int, fits: bool) -> None:
    assert builders.fits_one_gpu(parameters, gpu_gb, seq) is fits


def test_auto_shards_a_model_too_big_for_one_gpu() -> None:
    assert distributed(70 * BILLION, hardware={"profile": "a100x8"}).strategy == "fsdp"
    assert distributed(8 * BILLION, hardware={"profile": "a100x8"}).strategy == "ddp"
    assert distributed(7 * BILLION, hardware={"profile": "l4x4"}).strategy == "fsdp"
    assert distributed(7 * BILLION, hardware={"profile": "l4x4"}, hyperparameters={"maxSeqLength": 512}).strategy == "ddp"


def test_auto_is_ddp_when_sizes_are_unknown_or_there_is_nothing_to_shard_across() -> None:
    assert distributed(None, hardware={"profile": "l4x4"}).strategy == "ddp"
    assert distributed(70 * BILLION, hardware={"profile": "a100x8"}, distributed={"processesPerNode": 1}).strategy == "ddp"
    assert distributed(70 * BILLION, hardware={"profile": "cpu"}, distributed={"processesPerNode": 2}).strategy == "ddp"
    qlora = distributed(70 * BILLION, hardware={"profile": "a100x8"}, method={"lora": {"quantization": "nf4"}})
    assert qlora.strategy == "ddp"


def test_an_explicit_strategy_is_kept() -> None:
    assert distributed(BILLION, hardware={"profile": "a100x8"}, distributed={"strategy": "fsdp"}).strategy == "fsdp"
    assert distributed(70 * BILLION, hardware={"profile": "a100x8"}, distributed={"strategy": "ddp"}).strategy == "ddp"


def test_distributed_settings_of_a_group() -> None:
    settings = distributed(hardware={"profile": "a100x8", "nodes": 2})
    assert (settings.nodes, settings.processes_per_node, settings.world_size) == (2, 8, 16)
    assert settings.rendezvous_host == "ftjob-abc-trainer-0.ftjob-abc-trainers"
    assert settings.rendezvous_port == RENDEZVOUS_PORT
    single = distributed(hardware={"profile": "a100x8"})
    assert (single.nodes, single.processes_per_node, single.rendezvous_host) == (1, 8, None)


def test_the_run_carries_distributed_micro_batch_and_attention() -> None:
    body, ft, base = resources(hardware={"profile": "a100x8", "nodes": 2},
                               hyperparameters={"microBatchSize": 4, "attention": "flash_attention_2"})
    settings = builders.resolve_distributed(ft, base, size_training(ft.spec, base.spec, SETTINGS))
    run = builders.training_run(ft, base, training_uri="s3://t", validation_uri=None, store_root="s3://store",
                                distributed=settings)
    assert run.distributed == settings
    assert (run.hyperparameters.micro_batch_size, run.hyperparameters.attention) == (4, "flash_attention_2")
    _, plain, _ = resources()
    assert plain.spec.hyperparameters.micro_batch_size is None and plain.spec.hyperparameters.attention.value == "auto"


# -- the trainer Job ---------------------------------------------------------------------


def test_fatal_exit_codes_are_the_trainers() -> None:
    assert builders.FATAL_EXIT_CODES == (TrainerExit.fatal, TrainerExit.usage)
    assert all(type(code) is int for code in builders.FATAL_EXIT_CODES)


def test_a_group_is_an_indexed_job_with_a_subdomain() -> None:
    _, job = render(hardware={"profile": "a100x8", "nodes": 2})
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == builders.trainer_service_name("ftjob-abc") == "ftjob-abc-trainers"
    [container] = pod["containers"]
    assert container["ports"] == [{"name": "rendezvous", "containerPort": 29400, "protocol": "TCP"}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_a_group_fails_as_a_whole_and_tells_disruptions_and_fatal_exits_apart() -> None:
    _, job = render(hardware={"profile": "a100x8", "nodes": 2})
    assert job["spec"]["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [1, 2]}},
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "NotIn", "values": [0]}},
    ]


def test_a_single_pod_keeps_retrying_in_place() -> None:
    _, job = render(hardware={"profile": "a100x8"})
    spec = job["spec"]
    assert "completionMode" not in spec and "subdomain" not in spec["template"]["spec"]
    assert (spec["completions"], spec["backoffLimit"]) == (1, builders.TRAINER_BACKOFF_LIMIT)
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [1, 2]}},
    ]


def shm(job: dict) -> tuple[list, list]:
    pod = job["spec"]["template"]["spec"]
    volumes = [v for v in pod["volumes"] if v["name"] == "dshm"]
    mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "dshm"]
    return volumes, mounts


def test_multi_process_pods_get_a_memory_backed_dev_shm() -> None:
    volumes, mounts = shm(render(hardware={"profile": "a100x8"})[1])
    assert volumes == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    assert mounts == [{"name": "dshm", "mountPath": "/dev/shm"}]
    volumes, _ = shm(render(hardware={"profile": "l4x4"})[1])
    assert volumes[0]["emptyDir"]["sizeLimit"] == builders.DEFAULT_SHARED_MEMORY
    volumes, _ = shm(render(hardware={"profile": "cpu"}, distributed={"processesPerNode": 2})[1])
    assert volumes and volumes[0]["emptyDir"]["medium"] == "Memory"


def test_one_process_gets_no_dev_shm() -> None:
    assert shm(render(hardware={"profile": "cpu"})[1]) == ([], [])
    assert shm(render(hardware={"profile": "a100x8"}, distributed={"processesPerNode": 1})[1]) == ([], [])


def test_the_profiles_env_reaches_the_trainer() -> None:
    env = render(hardware={"profile": "a100x8"})[1]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "NCCL_IB_DISABLE", "value": "0"} in env and {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"} in env
    assert env[0]["name"] == "TUNEFORGE_STORE_ROOT"


def test_the_headless_service_selects_the_trainer_pods() -> None:
    body, job = render(hardware={"profile": "a100x8", "nodes": 2})
    service = builders.trainer_service(body)
    assert service["metadata"]["name"] == "ftjob-abc-trainers" and service["metadata"]["namespace"] == "team"
    assert service["metadata"]["ownerReferences"][0]["uid"] == "u-ft"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"] == [{"name": "rendezvous", "port": 29400, "targetPort": 29400, "protocol": "TCP"}]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert builders.trainer_service(body) == service


def test_pod_hostnames_of_the_largest_group_stay_dns_labels() -> None:
    name = builders.trainer_job_name("ftjob-" + "a" * 80)
    assert len(f"{name}-{MAX_NODES - 1}") <= 63 and name.endswith("-trainer")
    assert builders.trainer_job_name("ftjob-abc") == "ftjob-abc-trainer"


# -- reading a failed group --------------------------------------------------------------


def pod(name: str, exit_code: int | None, *, disrupted: bool = False, phase: str = "Failed") -> dict:
    conditions = [{"type": "DisruptionTarget", "status": "True"}] if disrupted else []
    state = {"terminated": {"exitCode": exit_code, "reason": "Error", "message": f"{name} ended"}} \
        if exit_code is not None else {"running": {}}
    return pod_summary({"metadata": {"name": name, "creationTimestamp": name},
                        "status": {"phase": phase, "conditions": conditions,
                                   "containerStatuses": [{"name": "trainer", "state": state}]}})


def failed_job(message: str) -> dict:
    return job_summary({"metadata": {"name": "j"}, "spec": {"completionMode": "Indexed"},
                        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                                   "message": message}]}})


RETRYABLE = "Container trainer for pod ns/j-1-x failed with exit code 75 matching FailJob rule at index 2"
FATAL = "Container trainer for pod ns/j-0-x failed with exit code 1 matching FailJob rule at index 1"
DISRUPTED = "Pod ns/j-0-x has condition DisruptionTarget matching FailJob rule at index 0"


def test_summaries_carry_what_a_group_restart_needs() -> None:
    assert failed_job(RETRYABLE)["indexed"] is True and failed_job(RETRYABLE)["failed"] is True
    assert pod("p", 143, disrupted=True)["disrupted"] is True and pod("p", 75)["disrupted"] is False


@pytest.mark.parametrize("message,pods,fatal,disrupted", [
    (RETRYABLE, [pod("a", 75), pod("b", 143)], False, False),
    (FATAL, [pod("a", 1), pod("b", 143)], True, False),
    (FATAL, [], True, False),  # the Pods' watch trails the Job's
    ("", [pod("a", 2)], True, False),
    (DISRUPTED, [pod("a", 143), pod("b", 143)], False, True),
    ("", [pod("a", 143, disrupted=True)], False, True),
    ("BackoffLimitExceeded", [pod("a", None)], False, False),
])
def test_group_failure(message: str, pods: list[dict], fatal: bool, disrupted: bool) -> None:
    assert group_failure(failed_job(message), pods) == GroupFailure(fatal=fatal, disrupted=disrupted)


def test_the_pod_that_failed_first_speaks_for_the_group() -> None:
    pods = [pod("a", 143), pod("b", 75), pod("c", None, phase="Pending")]
    assert [p["name"] for p in failed_first(pods)] == ["b", "c"]
    stopped = [pod("a", 143), pod("b", 143)]
    assert failed_first(stopped) == stopped


@pytest.mark.parametrize(("name", "fits"), [("ftjob-abc123", True), ("run-" + "a" * 200, True),
                                            ("llama-3.1-run", False), ("8b-run", False), ("run-", False)])
def test_a_group_needs_a_name_its_service_and_hostnames_can_take(name: str, fits: bool) -> None:
    assert (builders.group_name_problem(name) is None) is fits
    if fits:
        service, hostname = builders.trainer_service_name(name), f"{builders.trainer_job_name(name)}-{MAX_NODES - 1}"
        assert re.match(SERVICE_NAME_PATTERN, service) and len(service) <= 63
        assert re.match(DNS_LABEL_PATTERN, hostname) and len(hostname) <= 63
