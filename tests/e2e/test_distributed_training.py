"""Training on several processes and several Pods on the local platform: one Pod running
two processes, and two Pods (an Indexed Job) of one process each, train, from the same
seed and data, the adapter one process trains; killing one Pod of the pair restarts the
whole group, which resumes from its newest checkpoint and finishes.

Tolerance (as in tests/unit/trainer/test_processes.py): splitting a step's rows across
processes only reorders fp32 sums; over this run that moves the adapter by about 1e-7 of
its size, so 1e-5 leaves room for rounding while one missing or repeated step (about
1e-3 here) would fail."""

from __future__ import annotations

import json
import uuid

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.local.devstack import LOCAL_CPU_PROFILE, TINY

from tests.support.devstack import (
    final_job,
    json_training_rows,
    kill_container_process,
    kubectl_json,
    pods_of,
    store_path,
    upload_jsonl,
    wait_for,
)

pytestmark = pytest.mark.e2e

HYPERPARAMETERS = {"nEpochs": 4, "batchSize": 2, "seed": 7, "maxSeqLength": 128}


@pytest.fixture(scope="module")
def training_file(openai_client) -> str:
    return upload_jsonl(openai_client, "people.jsonl", json_training_rows(24), "fine-tune")


def _apply_job(stack, training_file: str, **spec) -> str:
    name = f"ftjob-{uuid.uuid4().hex[:16]}"
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
            "metadata": {"name": name, "namespace": stack.tenant},
            "spec": {"baseModel": TINY, "trainingFile": training_file, "hyperparameters": HYPERPARAMETERS,
                     "checkpoints": {"everyNSteps": 8, "keepLast": 10}, **spec}}
    stack.plane.kubectl("apply", "-f", "-", input=json.dumps(body))
    return name


def _job_dir(stack, name: str):
    return store_path(stack, stack.tenant, "fine-tuning", name)


def _adapter(stack, name: str) -> dict[str, torch.Tensor]:
    return load_file(_job_dir(stack, name) / "adapter" / "adapter_model.safetensors")


def _relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    diff = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5
    return diff / sum(float(a[k].pow(2).sum()) for k in a) ** 0.5


def _succeeded(openai_client, name: str):
    job = final_job(openai_client, name, timeout=600)
    assert job.status == "succeeded", job.error
    return job


@pytest.fixture(scope="module")
def one_process(dev_stack, openai_client, training_file) -> str:
    name = _apply_job(dev_stack, training_file)
    _succeeded(openai_client, name)
    return name


def test_one_pod_with_two_processes_trains_the_one_process_adapter(dev_stack, openai_client, training_file,
                                                                   one_process):
    name = _apply_job(dev_stack, training_file, hardware={"profile": LOCAL_CPU_PROFILE},
                      distributed={"processesPerNode": 2})
    _succeeded(openai_client, name)
    result = json.loads((_job_dir(dev_stack, name) / "result.json").read_text())
    assert result["performance"]["world_size"] == 2
    assert result["steps"] == 48
    pod = pods_of(dev_stack, dev_stack.tenant, f"tuneforge.io/fine-tuning-job={name}")[0]
    assert any(v["name"] == "dshm" or v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["spec"]["volumes"])
    assert _relative_difference(_adapter(dev_stack, one_process), _adapter(dev_stack, name)) < 1e-5


def test_two_pods_train_as_one_group_and_a_lost_pod_restarts_the_group(dev_stack, openai_client, training_file,
                                                                      one_process):
    name = _apply_job(dev_stack, training_file, hardware={"profile": LOCAL_CPU_PROFILE, "nodes": 2})
    checkpoints = _job_dir(dev_stack, name) / "checkpoints"
    wait_for("the group's first checkpoint", lambda: checkpoints.is_dir() and any(
        (entry / "COMPLETE").exists() for entry in checkpoints.iterdir()), timeout=300, every=0.2)
    selector = f"tuneforge.io/fine-tuning-job={name}"
    pods = {p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]: p
            for p in pods_of(dev_stack, dev_stack.tenant, selector) if p["status"].get("phase") == "Running"}
    assert sorted(pods) == ["0", "1"]
    kill_container_process(dev_stack, pods["1"], "trainer")

    job = _succeeded(openai_client, name)
    resource = kubectl_json(dev_stack, "get", "ftjob", name, "-n", dev_stack.tenant)
    assert resource["status"]["groupRestarts"] == 1
    every_event = list(openai_client.fine_tuning.jobs.list_events(job.id, limit=100))  # the client follows pages
    events = [e.message for e in every_event]
    assert any(m.startswith("Resumed from checkpoint step-") and m.endswith("on 2 process(es)") for m in events)
    metric_steps = sorted(e.data["step"] for e in every_event if e.type == "metrics")
    assert metric_steps == list(range(1, 49))  # every step reported once across the restart
    trainer_job = kubectl_json(dev_stack, "get", "job", "-n", dev_stack.tenant, "-l", selector)["items"][0]
    assert trainer_job["spec"]["completionMode"] == "Indexed" and trainer_job["spec"]["completions"] == 2
    assert _relative_difference(_adapter(dev_stack, one_process), _adapter(dev_stack, name)) < 1e-5
