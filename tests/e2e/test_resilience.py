"""Failures the platform must ride out: the operator dies mid-job, the trainer's process
dies mid-run. Work already done is kept (checkpoints, the batch journal) and the results
are complete and exactly once."""

from __future__ import annotations

import json
import re

import pytest

from tuneforge.local.devstack import TINY_ID

from tests.support.devstack import (
    final_batch,
    final_job,
    job_events,
    json_training_rows,
    kill_container_process,
    kubectl_json,
    pods_of,
    start_training_and_batch,
    upload_jsonl,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_jobs_complete_when_the_operator_is_killed_mid_run(dev_stack, openai_client):
    job, batch, lines = start_training_and_batch(openai_client, rows=16, epochs=3, requests=60)

    dev_stack.operator.kill()
    assert not dev_stack.operator.alive
    dev_stack.operator.start()

    job = final_job(openai_client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model
    batch = final_batch(openai_client, batch.id)
    assert batch.status == "completed", batch.errors
    output = [json.loads(line) for line in openai_client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(row["custom_id"] for row in output) == sorted(line["custom_id"] for line in lines)
    trainer_job = kubectl_json(dev_stack, "get", "job", f"{job.id}-trainer", "-n", dev_stack.tenant)
    assert trainer_job["status"].get("succeeded") == 1 and not trainer_job["status"].get("failed")


def test_killed_trainer_is_retried_and_resumes_from_its_checkpoint(dev_stack, openai_client):
    training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(12), "fine-tune")
    job = openai_client.fine_tuning.jobs.create(model=TINY_ID, training_file=training_file,
                                                hyperparameters={"n_epochs": 8, "batch_size": 1})
    selector = f"tuneforge.io/fine-tuning-job={job.id}"
    first_checkpoint = wait_for("the first checkpoint", lambda: openai_client.fine_tuning.jobs.checkpoints.list(
        job.id).data, every=0.3)[0].step_number
    (pod,) = pods_of(dev_stack, dev_stack.tenant, selector)
    kill_container_process(dev_stack, pod, "trainer")

    job = final_job(openai_client, job.id)
    assert job.status == "succeeded", job.error
    events = job_events(openai_client, job.id)
    resumed = [m for m in events if m.startswith("Resumed from checkpoint")]
    assert resumed, events
    assert int(re.match(r"Resumed from checkpoint step-(\d+) ", resumed[0]).group(1)) >= first_checkpoint
    ftjob = kubectl_json(dev_stack, "get", "ftjob", job.id, "-n", dev_stack.tenant)
    assert ftjob["status"]["progress"]["step"] == ftjob["status"]["progress"]["totalSteps"] == 12 * 8
    pods = pods_of(dev_stack, dev_stack.tenant, selector)
    ends = sorted((p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]) for p in pods)
    assert ends == [0, 137]
    trainer_job = kubectl_json(dev_stack, "get", "job", f"{job.id}-trainer", "-n", dev_stack.tenant)
    assert (trainer_job["status"].get("failed"), trainer_job["status"].get("succeeded")) == (1, 1)
