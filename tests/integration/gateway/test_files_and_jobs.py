"""The seed walkthrough with the official openai client: files and fine-tuning jobs."""

from __future__ import annotations

import io
import json

import openai
import pytest
from gateway_testkit import batch_lines, platform_serving_key, training_lines
from kubernetes import client

from tuneforge.config import settings
from tuneforge.jobfiles import EVENTS, METRICS, JobFiles
from tuneforge.webhook_signing import job_signing_secret

pytestmark = pytest.mark.integration


def _upload(api: openai.OpenAI, data: bytes, purpose: str = "fine-tune", name: str = "train.jsonl"):
    return api.files.create(file=(name, io.BytesIO(data)), purpose=purpose)


def test_files_upload_list_retrieve_content_delete(tenant) -> None:
    namespace, api = tenant
    train = _upload(api, training_lines())
    assert train.status == "processed" and train.bytes == len(training_lines()) and train.filename == "train.jsonl"
    batch = _upload(api, batch_lines(), purpose="batch", name="batch.jsonl")
    bad = _upload(api, training_lines(3))
    assert bad.status == "error" and "at least 10" in bad.status_details

    assert api.files.retrieve(train.id).id == train.id
    assert api.files.content(train.id).content == training_lines()
    assert {f.id for f in api.files.list(purpose="batch")} == {batch.id}
    first = api.files.list(limit=2, order="asc")
    assert [f.id for f in first.data] == [train.id, batch.id] and first.has_more
    assert [f.id for f in api.files.list(limit=1, order="asc")] == [train.id, batch.id, bad.id]  # auto-paging

    assert api.files.delete(bad.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        api.files.retrieve(bad.id)


def test_upload_errors_carry_code_and_param(tenant, base_model) -> None:
    _, api = tenant
    with pytest.raises(openai.BadRequestError) as exc:
        _upload(api, training_lines(), purpose="assistants")
    assert exc.value.code == "invalid_purpose" and exc.value.param == "purpose"

    invalid = _upload(api, b'{"messages": [}\n' + training_lines())
    assert invalid.status == "error" and invalid.status_details.startswith("line 1:")
    with pytest.raises(openai.BadRequestError) as exc:
        api.fine_tuning.jobs.create(model=base_model, training_file=invalid.id)
    assert (exc.value.code, exc.value.param) == ("invalid_json_line", "training_file")
    with pytest.raises(openai.BadRequestError) as exc:
        api.fine_tuning.jobs.create(model="not-in-catalog", training_file=invalid.id)
    assert (exc.value.code, exc.value.param) == ("model_not_available", "model")


def test_upload_limit_is_413(gateway, namespace, monkeypatch) -> None:
    from tuneforge.gateway.settings import gateway_settings

    monkeypatch.setattr(gateway_settings(), "max_upload_bytes", 100)
    api = gateway.client(gateway.key(namespace))
    for purpose, data in (("fine-tune", training_lines()), ("batch", batch_lines())):
        with pytest.raises(openai.APIStatusError) as exc:
            _upload(api, data, purpose)
        assert exc.value.status_code == 413 and exc.value.code == "file_too_large"
    assert api.files.list().data == []


def test_training_files_have_their_own_lower_limit(gateway, namespace, monkeypatch) -> None:
    """Batch input files may be as large as `max_upload_bytes`; training files stop at
    `max_fine_tune_upload_bytes`, as the trainer holds a training set in memory."""
    from tuneforge.gateway.settings import gateway_settings

    training, batch = training_lines(), batch_lines(20)
    assert len(batch) > len(training)
    monkeypatch.setattr(gateway_settings(), "max_fine_tune_upload_bytes", len(training) - 1)
    api = gateway.client(gateway.key(namespace))
    with pytest.raises(openai.APIStatusError) as exc:
        _upload(api, training)
    assert (exc.value.status_code, exc.value.code, exc.value.param) == (413, "file_too_large", "file")
    assert f"purpose 'fine-tune' may be at most {len(training) - 1} bytes" in exc.value.message
    uploaded = _upload(api, batch, "batch")
    assert (uploaded.status, uploaded.bytes) == ("processed", len(batch))
    assert [f.id for f in api.files.list().data] == [uploaded.id]


def test_fine_tuning_walkthrough(tenant, base_model, gateway, api_client) -> None:
    namespace, api = tenant
    train = _upload(api, training_lines())
    job = api.fine_tuning.jobs.create(
        model=base_model,
        training_file=train.id,
        suffix="support-bot",
        seed=7,
        metadata={"team": "support"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4,
                                                                         "learning_rate_multiplier": 0.5}}},
    )
    assert job.id.startswith("ftjob-") and job.status == "validating_files" and job.seed == 7
    assert job.hyperparameters.n_epochs == 2 and job.method.supervised.hyperparameters.batch_size == 4
    assert job.integrations is None and job.metadata == {"team": "support"}
    resource = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "tuneforge.io", "v1alpha1", namespace, "finetuningjobs", job.id)
    assert resource["spec"]["hyperparameters"]["nEpochs"] == 2
    assert resource["spec"]["hyperparameters"]["learningRateMultiplier"] == 0.5
    assert resource["spec"]["suffix"] == "support-bot" and resource["spec"]["trainingFile"] == train.id

    # nickname is the reference documents' word for suffix; the top-level hyperparameters still work.
    other = api.fine_tuning.jobs.create(model=base_model, training_file=train.id,
                                        hyperparameters={"n_epochs": 1}, extra_body={"nickname": "nick"})
    third = api.fine_tuning.jobs.create(model=base_model, training_file=train.id, metadata={"team": "other"})
    assert other.to_dict()["user_provided_suffix"] == "nick" and other.hyperparameters.n_epochs == 1
    assert api.fine_tuning.jobs.retrieve(job.id).model_dump()["training_file"] == train.id

    first_page = api.fine_tuning.jobs.list(limit=2)
    assert len(first_page.data) == 2 and first_page.has_more
    assert [j.id for j in api.fine_tuning.jobs.list(limit=1)] == [third.id, other.id, job.id]
    assert [j.id for j in api.fine_tuning.jobs.list(metadata={"team": "support"})] == [job.id]

    paused = api.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    assert api.fine_tuning.jobs.resume(job.id).status == "validating_files"
    cancelled = api.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "tuneforge.io", "v1alpha1", namespace, "finetuningjobs", job.id)["spec"]["cancel"] is True
    with pytest.raises(openai.BadRequestError) as exc:
        api.fine_tuning.jobs.resume(job.id)
    assert exc.value.code == "invalid_job_state"

    # Events and checkpoints, as trainers write them into the store: steps 1-3 in the single
    # files of an older trainer, steps 4-5 in the log objects of the current one, compacted
    # into one (a fanout of 2) whose source for step 4 a crash left behind.
    store = gateway.store
    job_dir = store.fine_tuning_dir(namespace, job.id)
    files = JobFiles.of(store, namespace, job.id)
    events, metrics = files.log_writer(EVENTS, fanout=2), files.log_writer(METRICS, fanout=2)
    for n in range(1, 6):
        event = json.dumps({"object": "fine_tuning.job.event", "id": f"ftevent-{n}", "created_at": 1700000000 + n,
                            "level": "info", "message": f"Step {n}", "type": "metrics", "data": {"step": n}})
        metric = json.dumps({"step": n, "train_loss": 1.0 / n})
        if n <= 3:
            store.append_line(f"{job_dir}/events.jsonl", event)
            store.append_line(f"{job_dir}/metrics.jsonl", metric)
        else:
            events.append(event)
            metrics.append(metric)
            events.flush()
            metrics.flush()
    assert files.segments(EVENTS) == [(0, 1)]
    store.write_bytes(files.segment_path(EVENTS, 0), store.read_bytes(files.segment_path(EVENTS, 0, 1)).splitlines()[0] + b"\n")
    for step in (2, 4):
        store.write_bytes(f"{job_dir}/checkpoints/step-{step}/COMPLETE", b"")
    store.write_bytes(f"{job_dir}/checkpoints/step-5/adapter_model.safetensors", b"partial")  # no marker yet

    events = api.fine_tuning.jobs.list_events(job.id, limit=2)
    assert [e.id for e in events.data] == ["ftevent-5", "ftevent-4"] and events.has_more
    assert [e.message for e in api.fine_tuning.jobs.list_events(job.id, limit=2)] == [f"Step {n}" for n in range(5, 0, -1)]
    assert events.data[0].data == {"step": 5} and events.data[0].type == "metrics"

    checkpoints = api.fine_tuning.jobs.checkpoints.list(job.id)
    assert [c.step_number for c in checkpoints.data] == [4, 2]
    assert checkpoints.data[0].metrics.train_loss == 0.25
    assert checkpoints.data[0].fine_tuned_model_checkpoint == (
        f"ft:{base_model}:{namespace}:support-bot:{job.id}:ckpt-step-4")


def test_create_validation_errors(tenant, base_model) -> None:
    _, api = tenant
    bad = _upload(api, training_lines(3))
    batch = _upload(api, batch_lines(), purpose="batch")
    good = _upload(api, training_lines())
    cases = [
        (dict(training_file=bad.id), "invalid_n_examples", "training_file"),
        (dict(training_file=batch.id), "invalid_file_purpose", "training_file"),
        (dict(training_file="file-doesnotexist00"), "invalid_file", "training_file"),
        (dict(training_file="file:///etc/passwd"), "invalid_file", "training_file"),
        (dict(training_file=good.id, validation_file=bad.id), "invalid_n_examples", "validation_file"),
        (dict(training_file=good.id, suffix="Bad Suffix"), "invalid_suffix", "suffix"),
        (dict(training_file=good.id, hyperparameters={"n_epochs": 0}), "invalid_value", "hyperparameters.n_epochs"),
        (dict(training_file=good.id, method={"type": "dpo"}), "invalid_value", "method.type"),
        (dict(training_file=good.id, metadata={f"k{i}": "v" for i in range(17)}), "invalid_value", "metadata"),
    ]
    for kwargs, code, param in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            api.fine_tuning.jobs.create(model=base_model, **kwargs)
        assert (exc.value.code, exc.value.param) == (code, param), kwargs
        assert set(exc.value.body) >= {"message", "type", "param", "code"}


def test_idempotency_key(tenant, base_model) -> None:
    _, api = tenant
    train = _upload(api, training_lines())
    headers = {"Idempotency-Key": "retry-1"}
    first = api.fine_tuning.jobs.create(model=base_model, training_file=train.id, extra_headers=headers)
    again = api.fine_tuning.jobs.create(model=base_model, training_file=train.id, extra_headers=headers)
    assert first.id == again.id and len(api.fine_tuning.jobs.list().data) == 1
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        api.fine_tuning.jobs.create(model=base_model, training_file=train.id, suffix="x", extra_headers=headers)
    assert exc.value.code == "idempotency_key_reused"
    upload = api.files.create(file=("a.jsonl", io.BytesIO(training_lines())), purpose="fine-tune",
                              extra_headers={"Idempotency-Key": "u-1"})
    assert api.files.create(file=("a.jsonl", io.BytesIO(training_lines())), purpose="fine-tune",
                            extra_headers={"Idempotency-Key": "u-1"}).id == upload.id


def test_unknown_ids_are_not_found(tenant) -> None:
    _, api = tenant
    for call in (
        lambda: api.fine_tuning.jobs.retrieve("ftjob-0123456789abcdef"),
        lambda: api.fine_tuning.jobs.cancel("ftjob-0123456789abcdef"),
        lambda: api.fine_tuning.jobs.list_events("nonsense"),
        lambda: api.files.retrieve("file-0123456789"),
        lambda: api.files.content("../../etc"),
        lambda: api.batches.retrieve("batch-0123456789"),
        lambda: api.models.retrieve("ft:nope:x:y:ftjob-1234"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()


def test_webhook_url_extension(tenant, base_model, gateway) -> None:
    """`extra_body={"webhook_url": ...}`: the job gets a platform-signed webhook, and the
    create response (only) hands out the secret its deliveries are signed with."""
    namespace, api = tenant
    train = _upload(api, training_lines())
    key = platform_serving_key(gateway.api_client, settings().system_namespace)
    job = api.fine_tuning.jobs.create(model=base_model, training_file=train.id,
                                      extra_body={"webhook_url": "https://hooks.example/ft?team=a"})
    assert job.webhook_secret == job_signing_secret(key, namespace, job.id)
    resource = client.CustomObjectsApi(gateway.api_client).get_namespaced_custom_object(
        "tuneforge.io", "v1alpha1", namespace, "finetuningjobs", job.id)
    assert resource["spec"]["notifications"] == {
        "webhookUrl": "https://hooks.example/ft?team=a", "signWithPlatformKey": True,
        "events": ["succeeded", "failed"]}
    assert "webhook_secret" not in api.fine_tuning.jobs.retrieve(job.id).model_extra
    assert api.fine_tuning.jobs.create(model=base_model, training_file=train.id).webhook_secret is None
    for url in ("ftp://hooks.example/ft", "hooks.example/ft", "https://"):
        with pytest.raises(openai.BadRequestError) as exc:
            api.fine_tuning.jobs.create(model=base_model, training_file=train.id, extra_body={"webhook_url": url})
        assert (exc.value.code, exc.value.param) == ("invalid_webhook_url", "webhook_url")
