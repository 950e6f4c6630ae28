"""Multi-node FineTuningJobs against the real API server and Job controller: the Indexed
trainer Job and its headless Service, refusals of impossible requests, and group restarts
driven by Pod outcomes reported as a kubelet would (the Job controller applies the
podFailurePolicy for real)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from tuneforge.contracts import TrainingRun

from tests.support.apiserver import Kube, wait_for
from tests.support.operator_process import Operator
from tests.support.store_layout import chat_example, upload

pytestmark = pytest.mark.integration
PLURAL = "finetuningjobs"
GROUP_OF_TWO = {"hardware": {"profile": "h100-8x2", "nodes": 2}}


def new_job(kube: Kube, store_root: Path, namespace: str, base: str, name: str | None = None, **spec: object) -> str:
    file_id = f"file-{uuid.uuid4().hex[:12]}"
    upload(store_root, namespace, file_id, [chat_example(i) for i in range(12)])
    name = name or f"ftjob-{uuid.uuid4().hex[:10]}"
    kube.create(namespace, PLURAL, {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
                                    "metadata": {"name": name},
                                    "spec": {"baseModel": base, "trainingFile": file_id, **spec}})
    return name


def group_pods(kube: Kube, namespace: str, job_uid: str, operator: Operator) -> list[str]:
    """The names of a trainer Job's two Pods, by completion index."""
    def both():
        pods = kube.pods(namespace, f"batch.kubernetes.io/controller-uid={job_uid}")
        return len(pods) == 2 and sorted(pods, key=lambda p: p.metadata.annotations[
            "batch.kubernetes.io/job-completion-index"])
    return [p.metadata.name for p in wait_for(both, 30, "two trainer Pods", operator)]


def new_trainer_job(kube: Kube, namespace: str, name: str, previous_uid: str | None, operator: Operator) -> str:
    """The uid of the trainer Job once one other than `previous_uid` exists."""
    def created():
        job = kube.job(namespace, f"{name}-trainer")
        return job is not None and job.metadata.uid != previous_uid and not job.metadata.deletion_timestamp \
            and job.metadata.uid
    return wait_for(created, 60, "a new trainer Job", operator)


def disrupt(kube: Kube, namespace: str, pod: str) -> None:
    """A preemption as the scheduler reports it: DisruptionTarget first, then the Pod ends."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    kube.core.patch_namespaced_pod_status(pod, namespace, {"status": {"conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "lastTransitionTime": now}]}})
    kube.set_pod(namespace, pod, "trainer", phase="Failed", exit_code=143)


def test_a_two_node_job_is_an_indexed_job_with_a_headless_service(kube: Kube, operator: Operator, namespace: str,
                                                                  base_model: str, store_root: Path) -> None:
    name = new_job(kube, store_root, namespace, base_model, **GROUP_OF_TWO)
    job = wait_for(lambda: kube.job(namespace, f"{name}-trainer"), 30, "trainer Job", operator)
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 2, 2)
    pod = job.spec.template.spec
    assert pod.subdomain == f"{name}-trainers"
    [shm] = [v for v in pod.volumes if v.name == "dshm"]
    assert (shm.empty_dir.medium, shm.empty_dir.size_limit) == ("Memory", "32Gi")
    container = pod.containers[0]
    assert any(m.mount_path == "/dev/shm" for m in container.volume_mounts)
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in [{"name": e.name, "value": e.value} for e in container.env]
    assert container.resources.limits["nvidia.com/gpu"] == "8"

    service = kube.core.read_namespaced_service(f"{name}-trainers", namespace)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True
    assert [(p.name, p.port) for p in service.spec.ports] == [("rendezvous", 29400)]
    assert service.metadata.owner_references[0].name == name
    pods = [kube.core.read_namespaced_pod(p, namespace) for p in group_pods(kube, namespace, job.metadata.uid, operator)]
    assert [p.spec.hostname for p in pods] == [f"{name}-trainer-0", f"{name}-trainer-1"]
    assert all(service.spec.selector.items() <= p.metadata.labels.items() for p in pods)

    run = TrainingRun.model_validate_json(kube.core.read_namespaced_config_map(f"{name}-run", namespace).data["run.json"])
    assert (run.distributed.nodes, run.distributed.processes_per_node, run.distributed.strategy) == (2, 8, "ddp")
    assert run.distributed.rendezvous_host == f"{name}-trainer-0.{name}-trainers"


@pytest.mark.parametrize("spec,code,param,words", [
    ({"hardware": {"profile": "h100-8x2", "nodes": 3}}, "invalid_hardware", "hardware.nodes",
     "exceeds maxNodes 2 of hardware profile 'h100-8x2'"),
    ({"hardware": {"profile": "a100-2", "nodes": 2}}, "invalid_hardware", "hardware.nodes",
     "exceeds maxNodes 1 of hardware profile 'a100-2'"),
    ({"hardware": {"profile": "a100-2"}, "distributed": {"processesPerNode": 4}}, "invalid_distributed",
     "distributed.processes_per_node", "4 processes per node exceed the 2 GPUs per Pod"),
    ({"hardware": {"profile": "h100-8x2"}, "method": {"lora": {"quantization": "nf4"}},
      "distributed": {"strategy": "fsdp"}}, "unsupported_distributed_strategy", "distributed.strategy", "nf4"),
    ({"hardware": {"profile": "h100-8x2", "gpuCount": 16}}, "invalid_hardware", "hardware.gpu_count",
     "16 GPUs per Pod is more than any hardware profile offers"),
])
def test_an_impossible_request_fails_with_code_param_and_message(kube: Kube, operator: Operator, namespace: str,
                                                                  base_model: str, store_root: Path, spec: dict,
                                                                  code: str, param: str, words: str) -> None:
    name = new_job(kube, store_root, namespace, base_model, **spec)
    wait_for(lambda: kube.status(namespace, PLURAL, name).get("phase") == "Failed", 30, "Failed", operator)
    status = kube.status(namespace, PLURAL, name)
    assert (status["error"]["code"], status["error"]["param"]) == (code, param)
    assert words in status["error"]["message"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Validated"] == "False"
    assert kube.job(namespace, f"{name}-trainer") is None
    assert kube.core.list_namespaced_service(namespace).items == []


def test_a_name_the_groups_hostnames_cannot_take_fails_a_multi_node_job_only(kube: Kube, operator: Operator,
                                                                          namespace: str, base_model: str,
                                                                          store_root: Path) -> None:
    """A dot is fine in a FineTuningJob's name and in a one-node trainer's, but not in the
    Service and Pod hostnames of a group: that job fails at validation, saying why."""
    group = new_job(kube, store_root, namespace, base_model, name="llama-3.1-group", **GROUP_OF_TWO)
    single = new_job(kube, store_root, namespace, base_model, name="llama-3.1-single")
    wait_for(lambda: kube.status(namespace, PLURAL, group).get("phase") == "Failed", 30, "Failed", operator)
    error = kube.status(namespace, PLURAL, group)["error"]
    assert error["code"] == "invalid_name" and "'llama-3.1-group'" in error["message"]
    assert "several nodes" in error["message"]
    assert kube.job(namespace, f"{group}-trainer") is None
    assert wait_for(lambda: kube.job(namespace, f"{single}-trainer"), 30, "the one-node trainer Job", operator)


def test_a_failed_pod_restarts_the_whole_group_until_the_budget_is_spent(kube: Kube, operator: Operator,
                                                                        namespace: str, base_model: str,
                                                                        store_root: Path) -> None:
    name = new_job(kube, store_root, namespace, base_model, distributed={"maxGroupRestarts": 1}, **GROUP_OF_TWO)
    first = new_trainer_job(kube, namespace, name, None, operator)
    pods = group_pods(kube, namespace, first, operator)
    kube.set_pod(namespace, pods[0], "trainer", phase="Running")
    wait_for(lambda: kube.status(namespace, PLURAL, name).get("phase") == "Running", 30, "Running", operator)

    kube.set_pod(namespace, pods[1], "trainer", phase="Failed", exit_code=75, message="NCCL watchdog timeout")
    second = new_trainer_job(kube, namespace, name, first, operator)
    status = kube.status(namespace, PLURAL, name)
    assert status["groupRestarts"] == 1 and status["phase"] == "Queued"
    events = [e for e in kube.core.list_namespaced_event(namespace).items
              if e.involved_object.name == name and e.reason == "GroupRestart"]
    assert events and "group restart 1 of 1 after training_failed: NCCL watchdog timeout" in events[0].message

    disrupt(kube, namespace, group_pods(kube, namespace, second, operator)[0])
    third = new_trainer_job(kube, namespace, name, second, operator)
    assert kube.status(namespace, PLURAL, name)["groupRestarts"] == 1  # a disruption is not counted

    kube.set_pod(namespace, group_pods(kube, namespace, third, operator)[1], "trainer", phase="Failed",
                 exit_code=75, message="CUDA error: an illegal memory access was encountered")
    wait_for(lambda: kube.status(namespace, PLURAL, name).get("phase") == "Failed", 60, "Failed", operator)
    status = kube.status(namespace, PLURAL, name)
    assert status["error"] == {"code": "training_failed", "message": "CUDA error: an illegal memory access was encountered"}
    assert status["groupRestarts"] == 1
    assert kube.job(namespace, f"{name}-trainer").metadata.uid == third
    services = kube.core.list_namespaced_service(namespace, label_selector=f"tuneforge.io/fine-tuning-job={name}")
    assert [s.metadata.name for s in services.items] == [f"{name}-trainers"]


def test_a_fatal_exit_fails_the_group_without_a_restart(kube: Kube, operator: Operator, namespace: str,
                                                        base_model: str, store_root: Path) -> None:
    name = new_job(kube, store_root, namespace, base_model, **GROUP_OF_TWO)
    first = new_trainer_job(kube, namespace, name, None, operator)
    pods = group_pods(kube, namespace, first, operator)
    message = json.dumps({"code": "invalid_run_spec", "message": "rendezvous_host is required", "param": None})
    kube.set_pod(namespace, pods[0], "trainer", phase="Failed", exit_code=1, message=message)
    wait_for(lambda: kube.status(namespace, PLURAL, name).get("phase") == "Failed", 60, "Failed", operator)
    status = kube.status(namespace, PLURAL, name)
    assert status["error"]["code"] == "invalid_run_spec" and "groupRestarts" not in status
    assert kube.job(namespace, f"{name}-trainer").metadata.uid == first
