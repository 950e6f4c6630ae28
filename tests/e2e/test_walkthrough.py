"""The reference documents' walkthrough on the local platform, through the official `openai` client:
upload a dataset, fine-tune, chat with the fine-tuned model in the shared deployment,
run a batch against it, download the results; `kubectl` tells the same story."""

from __future__ import annotations

import json

import pytest

from tuneforge.local.devstack import TINY, TINY_ID

from tests.support.devstack import (
    batch_lines,
    final_batch,
    final_job,
    job_events,
    json_training_rows,
    kubectl_json,
    pods_of,
    upload_jsonl,
)

pytestmark = pytest.mark.e2e


def test_fine_tune_chat_and_batch_with_the_openai_client(dev_stack, openai_client):
    system = dev_stack.settings.system_namespace
    serving_before = pods_of(dev_stack, system, f"tuneforge.io/model-deployment={TINY}")
    assert [p["status"]["phase"] for p in serving_before] == ["Running"]
    assert serving_before[0]["status"]["podIP"].startswith("127.0.")

    training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(12), "fine-tune")
    job = openai_client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=training_file, suffix="people",
        hyperparameters={"n_epochs": 2, "batch_size": 4},
    )
    job = final_job(openai_client, job.id)
    assert job.status == "succeeded", job.error
    assert job.model == TINY_ID and job.fine_tuned_model == f"ft:{TINY_ID}:{dev_stack.tenant}:people:{job.id}"
    assert job.trained_tokens and job.trained_tokens > 0
    events = job_events(openai_client, job.id)
    assert any(message.startswith("Training started") for message in events)
    assert any(message.startswith("Step 6/6") for message in events)
    assert "successfully completed" in events[-1]
    assert [c.step_number for c in openai_client.fine_tuning.jobs.checkpoints.list(job.id).data][0] == 6

    model = job.fine_tuned_model
    assert model in {m.id for m in openai_client.models.list().data}
    reply = openai_client.chat.completions.create(
        model=model, max_tokens=8, messages=[{"role": "user", "content": "Ada is 20 years old. Give JSON."}])
    assert reply.model == model
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0

    # Served by the shared deployment's same Pod with the adapter loaded at runtime: no redeploy.
    serving_after = pods_of(dev_stack, system, f"tuneforge.io/model-deployment={TINY}")
    assert [p["metadata"]["uid"] for p in serving_after] == [p["metadata"]["uid"] for p in serving_before]
    assert serving_after[0]["status"]["containerStatuses"][0]["restartCount"] == \
        serving_before[0]["status"]["containerStatuses"][0]["restartCount"]

    lines = batch_lines(model, 6, max_tokens=4)
    input_file = upload_jsonl(openai_client, "requests.jsonl", lines, "batch")
    batch = openai_client.batches.create(input_file_id=input_file, endpoint="/v1/chat/completions",
                                         completion_window="24h", metadata={"purpose": "e2e"})
    batch = final_batch(openai_client, batch.id)
    assert batch.status == "completed", batch.errors
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (6, 6, 0)
    output = [json.loads(line) for line in openai_client.files.content(batch.output_file_id).text.splitlines()]
    by_id = {row["custom_id"]: row for row in output}
    assert sorted(by_id) == sorted(line["custom_id"] for line in lines)
    for row in output:
        assert row["error"] is None
        assert row["response"]["status_code"] == 200
        assert row["response"]["body"]["model"] == model

    namespace = dev_stack.tenant
    ftjob = kubectl_json(dev_stack, "get", "ftjob", job.id, "-n", namespace)
    assert ftjob["status"]["phase"] == "Succeeded"
    assert ftjob["status"]["fineTunedModel"] == model
    bjob = kubectl_json(dev_stack, "get", "bjob", batch.id, "-n", namespace)
    assert bjob["status"]["phase"] == "Completed"
    mdep = kubectl_json(dev_stack, "get", "mdep", TINY, "-n", system)
    assert mdep["status"]["phase"] == "Ready"
    table = dev_stack.plane.kubectl("get", "ftjob,bjob", "-n", namespace).stdout
    job_row = next(line for line in table.splitlines() if line.startswith(f"finetuningjob.tuneforge.io/{job.id}"))
    assert "Succeeded" in job_row and model in job_row
    batch_row = next(line for line in table.splitlines() if line.startswith(f"batchjob.tuneforge.io/{batch.id}"))
    assert batch_row.split()[1:5] == ["Completed", "6", "6", "0"]
    trainer_pods = pods_of(dev_stack, namespace, f"tuneforge.io/fine-tuning-job={job.id}")
    assert [p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] for p in trainer_pods] == ["Completed"]
