"""What a fine-tuning job keeps when it does not finish: a job that fails after its retries
still lists its newest checkpoint, metrics and events, and a restart continues from that
checkpoint; a job cancelled mid-run still publishes every step it trained before it stopped."""

from __future__ import annotations

import re
import secrets
import time

import pytest
from kubernetes import client

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.controllers.builders.training import TRAINER_BACKOFF_LIMIT
from tuneforge.local.devstack import TINY, TINY_ID

from tests.support.devstack import (
    checkpoint_steps,
    final_job,
    job_events,
    json_training_rows,
    kill_container_process,
    kubectl_json,
    management_api,
    pods_of,
    step_events,
    upload_jsonl,
    wait_for,
)

pytestmark = pytest.mark.e2e


def _running_trainer(stack, selector: str, killed: set[str]) -> dict | None:
    running = [p for p in pods_of(stack, stack.tenant, selector)
               if p["status"].get("phase") == "Running" and p["metadata"]["name"] not in killed]
    return running[0] if running else None


def _create_job(stack, training_file: str, *, epochs: int, checkpoint_every: int) -> str:
    """As a FineTuningJob resource, as kubectl would: only its spec says how often the
    trainer checkpoints, and the APIs' default of every 50 steps is a fraction of a second
    of the tiny model's training."""
    name = f"ftjob-{secrets.token_hex(12)}"
    client.CustomObjectsApi(stack.api_client).create_namespaced_custom_object(GROUP, VERSION, stack.tenant,
                                                                              "finetuningjobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuningJob", "metadata": {"name": name},
        "spec": {"baseModel": TINY, "trainingFile": training_file,
                 "hyperparameters": {"nEpochs": epochs, "batchSize": 1},
                 "checkpoints": {"everyNSteps": checkpoint_every}},
    })
    return name


def _metrics_curve(api, job_id: str) -> dict[int, dict]:
    metrics = api.get(f"/jobs/{job_id}/metrics").raise_for_status().json()["metrics"]
    return {point["step"]: point for point in metrics["steps"]}


def test_a_job_failed_after_its_retries_keeps_its_newest_checkpoint_and_restarts_from_it(dev_stack, openai_client):
    """The trainer Job retries a failed trainer TRAINER_BACKOFF_LIMIT times (3), so it takes
    four kills to fail the job. The first trainer is killed once it has two checkpoints, so the
    newest is not the only one; its retries are killed as soon as they run, as a trainer that
    crashes while loading would be. Letting each retry resume and checkpoint first would add
    a trainer start-up per retry on top of the Job controller's backoff (10 s, 20 s and 40 s
    before the retries), which already is most of this test's time; failing through the
    trainer's fatal exit instead would fail the Job at once and never spend the retry budget
    this test is about."""
    began = time.monotonic()
    training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(12), "fine-tune")
    job = openai_client.fine_tuning.jobs.create(model=TINY_ID, training_file=training_file,
                                                hyperparameters={"n_epochs": 10, "batch_size": 1})
    selector = f"tuneforge.io/fine-tuning-job={job.id}"
    at_first_kill = wait_for("two checkpoints", lambda: (
        steps if len(steps := checkpoint_steps(openai_client, job.id)) >= 2 else None), timeout=180, every=0.3)
    killed: set[str] = set()
    for _ in range(TRAINER_BACKOFF_LIMIT + 1):
        pod = wait_for("a trainer Pod to run", lambda: _running_trainer(dev_stack, selector, killed), every=0.3)
        kill_container_process(dev_stack, pod, "trainer")
        killed.add(pod["metadata"]["name"])

    failed = final_job(openai_client, job.id, timeout=120)
    assert failed.status == "failed", failed.status
    assert failed.error and failed.error.message
    failed_at = time.monotonic()
    trainer_job = kubectl_json(dev_stack, "get", "job", f"{job.id}-trainer", "-n", dev_stack.tenant)
    assert trainer_job["status"].get("failed") == TRAINER_BACKOFF_LIMIT + 1

    listed = openai_client.fine_tuning.jobs.checkpoints.list(job.id).data
    newest = listed[0]
    assert newest.step_number >= at_first_kill[0]
    assert [c.step_number for c in listed] == sorted((c.step_number for c in listed), reverse=True)
    assert len(listed) >= 2
    with management_api(dev_stack) as api:
        curve = _metrics_curve(api, job.id)
    assert sorted(curve) == list(range(1, max(curve) + 1)) and max(curve) >= newest.step_number
    assert newest.metrics.step == newest.step_number
    assert newest.metrics.train_loss == curve[newest.step_number]["trainingLoss"]
    steps = step_events(openai_client, job.id)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= newest.step_number
    assert f"Checkpoint saved at step {newest.step_number}" in job_events(openai_client, job.id)

    with management_api(dev_stack) as api:
        restarted = api.post(f"/jobs/{job.id}/restart").raise_for_status().json()
    assert restarted["status"] == "queued"
    assert restarted["resumeFromStep"] == newest.step_number
    done = final_job(openai_client, job.id, timeout=180)
    assert done.status == "succeeded", done.error
    events = job_events(openai_client, job.id)
    resumed = [int(re.match(r"Resumed from checkpoint step-(\d+) ", m).group(1))
               for m in events if m.startswith("Resumed from checkpoint")]
    assert resumed == [newest.step_number]
    ftjob = kubectl_json(dev_stack, "get", "ftjob", job.id, "-n", dev_stack.tenant)
    total = ftjob["status"]["progress"]["totalSteps"]
    assert ftjob["status"]["progress"]["step"] == total == 12 * 10
    assert ftjob["status"]["restarts"] == 1
    assert step_events(openai_client, job.id) == list(range(1, total + 1))
    with management_api(dev_stack) as api:
        assert sorted(_metrics_curve(api, job.id)) == list(range(1, total + 1))
    print(f"\nfailed after retries: {len(killed)} kills (backoffLimit {TRAINER_BACKOFF_LIMIT}), the first at "
          f"checkpoints {at_first_kill}; error {failed.error.code}: {failed.error.message}; checkpoints listed at the "
          f"failure {[c.step_number for c in listed]}, metrics up to step {max(curve)}, {len(steps)} step events; "
          f"restart resumed from step-{resumed[-1]} and finished {total}/{total} steps; "
          f"{failed_at - began:.0f}s to fail, {time.monotonic() - began:.0f}s in all")


def test_a_cancelled_job_keeps_the_steps_it_trained(dev_stack, openai_client):
    """The cancel lands while the trainer holds metrics and events it has not flushed yet
    (the progress the API shows is ahead of the stored metrics curve). The step the trainer
    stops at is known apart from the logs, as the checkpoint it writes before it exits, so a
    trainer that drops its buffers on SIGTERM leaves a curve and events short of its newest
    checkpoint. Every checkpoint flushes the logs too, so the job checkpoints once per epoch
    of 600 steps, seconds apart however fast the machine trains, and the buffers fill
    between flushes."""
    began = time.monotonic()
    rows, epochs = 600, 5
    training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(rows), "fine-tune")
    job_id = _create_job(dev_stack, training_file, epochs=epochs, checkpoint_every=rows)
    wait_for("the first checkpoint", lambda: checkpoint_steps(openai_client, job_id), timeout=180, every=0.5)
    with management_api(dev_stack) as api:
        def unflushed() -> tuple[int, int] | None:
            shown = api.get(f"/jobs/{job_id}").raise_for_status().json()["progress"]["step"] or 0
            stored = max(_metrics_curve(api, job_id), default=0)
            return (shown, stored) if shown > stored else None

        progress_step, stored_step = wait_for("progress ahead of the stored metrics", unflushed, timeout=60,
                                               every=0.2)
    openai_client.fine_tuning.jobs.cancel(job_id)

    cancelled = final_job(openai_client, job_id, timeout=60)
    assert cancelled.status == "cancelled"
    selector = f"tuneforge.io/fine-tuning-job={job_id}"
    wait_for("the trainer to stop", lambda: all(
        p["status"].get("phase") in ("Succeeded", "Failed") for p in pods_of(dev_stack, dev_stack.tenant, selector)),
        timeout=120)
    with management_api(dev_stack) as api:
        curve = _metrics_curve(api, job_id)
    last = max(curve)
    assert sorted(curve) == list(range(1, last + 1))
    newest = openai_client.fine_tuning.jobs.checkpoints.list(job_id).data[0]
    assert newest.step_number == last
    assert newest.metrics.train_loss == curve[last]["trainingLoss"]
    assert progress_step <= last < rows * epochs
    assert step_events(openai_client, job_id) == list(range(1, last + 1))
    assert f"Stopped after step {last} on request; resuming continues from it" in job_events(openai_client, job_id)
    print(f"\ncancelled mid-run: progress showed step {progress_step} with metrics stored to step {stored_step} at "
          f"the cancel; the trainer stopped after step {last}, {len(curve)} metric points and step events, newest "
          f"checkpoint step {newest.step_number}; {time.monotonic() - began:.0f}s")
