"""Fine-tuning and batches under the real Kueue controller (tests/support/kueue.py) on the
local platform: quota holds jobs Queued with Kueue's reason and starts them in order, a
higher-priority job preempts a running one, which checkpoints, waits Queued and resumes
with continuous steps, a multi-node trainer is admitted as one workload or not at all, and
a batch runner named to a queue waits for its quota.

The ClusterQueue's quota is memory: each local trainer Pod requests the platform's default
16Gi (no hardware profile names less), so a quota of 16Gi admits one trainer at a time."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.config import DEFAULT_POD_MEMORY
from tuneforge.local.devstack import LOCAL_CPU_PROFILE, TINY, TINY_ID, DevStack

from tests.support.devstack import (
    batch_lines,
    checkpoint_steps,
    final_batch,
    final_job,
    job_events,
    json_training_rows,
    kubectl_json,
    pods_of,
    step_events,
    upload_jsonl,
    wait_for,
)
from tests.support.kueue import API, Kueue

pytestmark = pytest.mark.e2e
CLUSTER_QUEUE = "tuneforge-training"
QUEUE = "training"


def _cluster_queue(memory: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE}, "spec": {
        "namespaceSelector": {},
        "preemption": {"withinClusterQueue": "LowerPriority"},
        "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": "default", "resources": [
            {"name": "cpu", "nominalQuota": "64"}, {"name": "memory", "nominalQuota": memory}]}]}],
    }}


def _local_queue(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "LocalQueue", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": CLUSTER_QUEUE}}


@pytest.fixture(scope="module")
def kueue(dev_stack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    """Kueue on the e2e platform, one trainer's worth of quota, a LocalQueue in the tenant
    namespace and two WorkloadPriorityClasses."""
    with Kueue(dev_stack.plane, tmp_path_factory.mktemp("kueue")) as running:
        running.apply(
            {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": "default"}},
            _cluster_queue(DEFAULT_POD_MEMORY),
            _local_queue(dev_stack.tenant, QUEUE),
            {"apiVersion": API, "kind": "WorkloadPriorityClass", "metadata": {"name": "routine"}, "value": 100},
            {"apiVersion": API, "kind": "WorkloadPriorityClass", "metadata": {"name": "urgent"}, "value": 1000},
        )
        yield running
        dev_stack.plane.kubectl("delete", "localqueue", QUEUE, "-n", dev_stack.tenant, "--ignore-not-found")


def _custom(stack: DevStack) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(stack.api_client)


def _create_job(stack: DevStack, training_file: str, *, epochs: int, checkpoint_every: int = 50,
                **spec: Any) -> str:
    name = f"ftjob-{secrets.token_hex(12)}"
    _custom(stack).create_namespaced_custom_object(GROUP, VERSION, stack.tenant, "finetuningjobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuningJob", "metadata": {"name": name},
        "spec": {"baseModel": TINY, "trainingFile": training_file, "hyperparameters": {"nEpochs": epochs, "batchSize": 1},
                 "checkpoints": {"everyNSteps": checkpoint_every}, **spec},
    })
    return name


def _status(stack: DevStack, name: str) -> dict[str, Any]:
    return _custom(stack).get_namespaced_custom_object(GROUP, VERSION, stack.tenant, "finetuningjobs",
                                                       name).get("status") or {}


def _admitted(stack: DevStack, name: str) -> dict[str, Any]:
    return next((c for c in _status(stack, name).get("conditions") or [] if c["type"] == "Admitted"), {})


def _event_reasons(stack: DevStack, name: str) -> list[str]:
    events = kubectl_json(stack, "get", "events", "-n", stack.tenant,
                          "--field-selector", f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in sorted(events, key=lambda e: e["metadata"]["creationTimestamp"])]


def _trainer_pods(stack: DevStack, name: str) -> list[dict]:
    return pods_of(stack, stack.tenant, f"tuneforge.io/fine-tuning-job={name}")


def test_quota_holds_jobs_queued_with_kueues_reason_and_starts_them_in_order(dev_stack, openai_client, kueue,
                                                                             tmp_path: Path):
    """The tenant asks for queueing the way Kueue offers it, a LocalQueue named `default`:
    jobs started through the OpenAI API go through it with nothing set on them. The first
    job would train 1,800 steps, so the second arrives while it holds the quota; once the
    second is seen held, the first is cancelled, which frees the quota as finishing would."""
    kueue.apply(_local_queue(dev_stack.tenant, "default"))
    try:
        long_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(600), "fine-tune")
        training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(40), "fine-tune")
        first = openai_client.fine_tuning.jobs.create(model=TINY_ID, training_file=long_file,
                                                      hyperparameters={"n_epochs": 3, "batch_size": 1})
        wait_for("the first trainer to run", lambda: any(
            p["status"].get("phase") == "Running" for p in _trainer_pods(dev_stack, first.id)), every=0.5)
        second = openai_client.fine_tuning.jobs.create(model=TINY_ID, training_file=training_file,
                                                       hyperparameters={"n_epochs": 1, "batch_size": 1})
        held = wait_for("Kueue's reason on the second job", lambda: (
            a if (a := _admitted(dev_stack, second.id)).get("reason") == "Pending" else None), timeout=60, every=0.5)
        assert held["status"] == "False" and "insufficient unused quota for memory" in held["message"]
        assert openai_client.fine_tuning.jobs.retrieve(second.id).status == "queued"
        assert _trainer_pods(dev_stack, second.id) == []
        trainer = kubectl_json(dev_stack, "get", "job", f"{second.id}-trainer", "-n", dev_stack.tenant)
        assert trainer["spec"]["suspend"] is True and trainer["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "default"
        assert "KueuePending" in _event_reasons(dev_stack, second.id)

        openai_client.fine_tuning.jobs.cancel(first.id)
        assert final_job(openai_client, first.id).status == "cancelled"
        assert final_job(openai_client, second.id).status == "succeeded"
        first_status, second_status = _status(dev_stack, first.id), _status(dev_stack, second.id)
        assert second_status["startedAt"] >= first_status["finishedAt"]
        admitted = _admitted(dev_stack, second.id)
        assert admitted["status"] == "True" and CLUSTER_QUEUE in admitted["message"]
        assert _event_reasons(dev_stack, second.id).count("KueueAdmitted") == 1
        kueue_events = [m for m in job_events(openai_client, second.id) if m.startswith("Kueue: ")]
        assert kueue_events[0].startswith("Kueue: Pending: ") and "insufficient unused quota" in kueue_events[0]
        assert kueue_events[-1].startswith("Kueue: Admitted: ")
    finally:
        dev_stack.plane.kubectl("delete", "localqueue", "default", "-n", dev_stack.tenant, "--ignore-not-found")


def test_a_higher_priority_job_preempts_a_running_one_which_resumes_from_its_checkpoint(dev_stack, openai_client,
                                                                                       kueue):
    began = time.monotonic()
    rows, epochs = 300, 4
    training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(rows), "fine-tune")
    routine = _create_job(dev_stack, training_file, epochs=epochs, checkpoint_every=100,
                          queueName=QUEUE, workloadPriorityClass="routine")
    wait_for("the routine job's first checkpoint", lambda: checkpoint_steps(openai_client, routine),
             timeout=180, every=0.5)
    urgent = _create_job(dev_stack, training_file, epochs=1, queueName=QUEUE, workloadPriorityClass="urgent")

    preempted = wait_for("the routine job to be preempted", lambda: (
        a if (a := _admitted(dev_stack, routine)).get("reason") == "Preempted" else None), timeout=60, every=0.5)
    assert preempted["status"] == "False" and "Preempted to accommodate a workload" in preempted["message"]
    wait_for("the routine job back in Queued", lambda: _status(dev_stack, routine).get("phase") == "Queued",
             timeout=30, every=0.5)
    assert "KueuePreempted" in _event_reasons(dev_stack, routine)
    stopped_at = wait_for("the preempted trainer's last checkpoint", lambda: next((
        int(m.split()[3]) for m in job_events(openai_client, routine) if m.startswith("Stopped after step ")), None),
        timeout=60, every=0.5)

    assert final_job(openai_client, urgent).status == "succeeded"
    done = final_job(openai_client, routine)
    assert done.status == "succeeded", done.error
    assert _status(dev_stack, urgent)["finishedAt"] <= _status(dev_stack, routine)["finishedAt"]
    total = rows * epochs
    assert step_events(openai_client, routine) == list(range(1, total + 1))
    assert 0 < stopped_at < total
    trainer = kubectl_json(dev_stack, "get", "job", f"{routine}-trainer", "-n", dev_stack.tenant)
    assert trainer["status"].get("failed", 0) == 0, "a preemption must not spend the trainer's retries"
    print(f"\npreempted at step {stopped_at} of {total}, resumed from its checkpoint; both jobs done in "
          f"{time.monotonic() - began:.0f}s")


def test_a_multi_node_trainer_is_admitted_as_one_workload_or_not_at_all(dev_stack, openai_client, kueue):
    training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(20), "fine-tune")
    name = _create_job(dev_stack, training_file, epochs=1, queueName=QUEUE,
                       hardware={"profile": LOCAL_CPU_PROFILE, "nodes": 2})
    try:
        held = wait_for("Kueue's reason on the two-node job", lambda: (
            a if (a := _admitted(dev_stack, name)).get("reason") == "Pending" else None), timeout=60, every=0.5)
        assert "insufficient quota for memory" in held["message"] or "insufficient unused quota" in held["message"]
        [workload] = [w for w in kubectl_json(dev_stack, "get", "workloads.kueue.x-k8s.io", "-n", dev_stack.tenant)["items"]
                      if w["metadata"]["ownerReferences"][0]["name"] == f"{name}-trainer"]
        assert [podset["count"] for podset in workload["spec"]["podSets"]] == [2]
        time.sleep(3)
        assert _trainer_pods(dev_stack, name) == []

        kueue.apply(_cluster_queue(f"{2 * int(DEFAULT_POD_MEMORY.removesuffix('Gi'))}Gi"))
        admitted = wait_for("the two-node job admitted", lambda: (
            a if (a := _admitted(dev_stack, name)).get("status") == "True" else None), timeout=60, every=0.5)
        assert CLUSTER_QUEUE in admitted["message"]
        trainer = kubectl_json(dev_stack, "get", "job", f"{name}-trainer", "-n", dev_stack.tenant)
        assert trainer["spec"]["suspend"] is False and trainer["spec"]["parallelism"] == 2
        wait_for("both trainer Pods", lambda: len(_trainer_pods(dev_stack, name)) == 2, timeout=60, every=0.5)
    finally:
        _custom(dev_stack).patch_namespaced_custom_object(GROUP, VERSION, dev_stack.tenant, "finetuningjobs", name,
                                                          {"spec": {"cancel": True}})
        kueue.apply(_cluster_queue(DEFAULT_POD_MEMORY))


def test_a_batch_runner_named_to_a_queue_waits_for_its_quota(dev_stack, openai_client, kueue):
    """A batch in a queue with no room: Validating with Kueue's reason, no runner Pod; once
    the ClusterQueue has room the runner starts and the batch completes."""
    cluster_queue = _cluster_queue("0")
    cluster_queue["metadata"]["name"] = "tuneforge-batches"
    queue = _local_queue(dev_stack.tenant, "batches")
    queue["spec"]["clusterQueue"] = "tuneforge-batches"
    kueue.apply(cluster_queue, queue)
    lines = batch_lines(TINY_ID, 4, max_tokens=8)
    name = f"batch-{secrets.token_hex(12)}"
    _custom(dev_stack).create_namespaced_custom_object(GROUP, VERSION, dev_stack.tenant, "batchjobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "BatchJob", "metadata": {"name": name},
        "spec": {"inputFile": upload_jsonl(openai_client, "in.jsonl", lines, "batch"), "completionWindow": "1h",
                 "queueName": "batches"},
    })

    def admitted() -> dict[str, Any]:
        status = _custom(dev_stack).get_namespaced_custom_object(GROUP, VERSION, dev_stack.tenant, "batchjobs",
                                                                 name).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == "Admitted"), {})

    held = wait_for("Kueue's reason on the batch", lambda: (
        a if (a := admitted()).get("reason") == "Pending" else None), timeout=60, every=0.5)
    assert "insufficient quota" in held["message"] or "insufficient unused quota" in held["message"]
    assert openai_client.batches.retrieve(name).status == "validating"
    assert pods_of(dev_stack, dev_stack.tenant, f"tuneforge.io/batch-job={name}") == []

    cluster_queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"][1]["nominalQuota"] = "4Gi"
    kueue.apply(cluster_queue)
    done = final_batch(openai_client, name)
    assert done.status == "completed" and done.request_counts.completed == len(lines)
    assert admitted()["status"] == "True"
