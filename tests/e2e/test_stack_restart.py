"""Stopping and starting the local platform on the same state directory keeps what users
made: files, jobs and fine-tuned models, which still answer after the restart."""

from __future__ import annotations

import pytest

from tuneforge.local.devstack import TINY, TINY_ID

from tests.support.devstack import final_job, json_training_rows, pods_of, upload_jsonl

pytestmark = pytest.mark.e2e


def test_a_restart_keeps_files_jobs_and_fine_tuned_models(dev_stack, openai_client):
    training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(10), "fine-tune")
    job = openai_client.fine_tuning.jobs.create(model=TINY_ID, training_file=training_file, suffix="kept",
                                                hyperparameters={"n_epochs": 1, "batch_size": 5})
    job = final_job(openai_client, job.id)
    assert job.status == "succeeded", job.error
    system = dev_stack.settings.system_namespace
    (serving,) = pods_of(dev_stack, system, f"tuneforge.io/model-deployment={TINY}")
    restarts = serving["status"]["containerStatuses"][0]["restartCount"]

    dev_stack.stop()
    dev_stack.start()

    assert training_file in {f.id for f in openai_client.files.list().data}
    again = openai_client.fine_tuning.jobs.retrieve(job.id)
    assert (again.status, again.fine_tuned_model) == ("succeeded", job.fine_tuned_model)
    (after,) = pods_of(dev_stack, system, f"tuneforge.io/model-deployment={TINY}")
    assert after["metadata"]["uid"] == serving["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == restarts + 1
    reply = openai_client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                                  messages=[{"role": "user", "content": "Ada is 20."}])
    assert reply.model == job.fine_tuned_model and reply.choices[0].message.content
