"""Cancelling running work through the API stops its Pods and ends in `cancelled`."""

from __future__ import annotations

import json

import pytest

from tuneforge.local.devstack import TINY_ID

from tests.support.devstack import (
    batch_lines,
    final_batch,
    final_job,
    job_events,
    json_training_rows,
    kubectl_json,
    pods_of,
    upload_jsonl,
    wait_for,
)

pytestmark = pytest.mark.e2e


def _running_pods(stack, selector: str) -> list[dict]:
    return [p for p in pods_of(stack, stack.tenant, selector) if p["status"].get("phase") in ("Pending", "Running")]


def test_cancel_a_running_fine_tuning_job(dev_stack, openai_client):
    training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(16), "fine-tune")
    job = openai_client.fine_tuning.jobs.create(model=TINY_ID, training_file=training_file,
                                                hyperparameters={"n_epochs": 50, "batch_size": 1})
    wait_for("the trainer to report steps", lambda: any(
        m.startswith("Step ") for m in job_events(openai_client, job.id)), every=0.5)
    assert openai_client.fine_tuning.jobs.retrieve(job.id).status == "running"

    cancelled = openai_client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status in ("running", "cancelled")
    job = final_job(openai_client, job.id, timeout=180)
    assert job.status == "cancelled"
    assert job.fine_tuned_model is None
    selector = f"tuneforge.io/fine-tuning-job={job.id}"
    wait_for("the trainer Pod to stop", lambda: not _running_pods(dev_stack, selector), timeout=180)
    ftjob = kubectl_json(dev_stack, "get", "ftjob", job.id, "-n", dev_stack.tenant)
    assert ftjob["status"]["phase"] == "Cancelled"
    events = job_events(openai_client, job.id)
    steps = [int(m.split()[1].split("/")[0]) for m in events if m.startswith("Step ")]
    assert steps and max(steps) < 16 * 50
    assert not any("successfully completed" in m for m in events)


def test_cancel_a_running_batch(dev_stack, openai_client):
    lines = batch_lines(TINY_ID, 400, max_tokens=48)
    batch = openai_client.batches.create(input_file_id=upload_jsonl(openai_client, "in.jsonl", lines, "batch"),
                                         endpoint="/v1/chat/completions", completion_window="24h")
    wait_for("the batch to make progress", lambda: (
        (b := openai_client.batches.retrieve(batch.id)).status == "in_progress" and b.request_counts.completed > 0),
        every=0.5)

    assert openai_client.batches.cancel(batch.id).status == "cancelling"
    batch = final_batch(openai_client, batch.id, timeout=180)
    assert batch.status == "cancelled"
    counts = batch.request_counts
    assert 0 < counts.completed < counts.total == 400
    output = [json.loads(line) for line in openai_client.files.content(batch.output_file_id).text.splitlines()]
    assert len(output) == counts.completed
    assert len({row["custom_id"] for row in output}) == len(output)
    wait_for("the runner Pod to stop", lambda: not _running_pods(dev_stack, f"tuneforge.io/batch-job={batch.id}"),
             timeout=120)
