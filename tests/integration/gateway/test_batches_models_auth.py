"""Batches, models, keys, scopes and tenant isolation through the official openai client."""

from __future__ import annotations

import io
import subprocess
import sys

import openai
import pytest
from gateway_testkit import batch_lines, training_lines
from kubernetes import client

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.config import settings

pytestmark = pytest.mark.integration


def _set_status(api_client, namespace: str, plural: str, name: str, status: dict) -> None:
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name, {"status": status})


def test_batch_walkthrough(tenant, gateway, api_client) -> None:
    namespace, api = tenant
    upload = api.files.create(file=("b.jsonl", io.BytesIO(batch_lines())), purpose="batch")
    batch = api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                               metadata={"run": "1"})
    assert batch.id.startswith("batch-") and batch.status == "validating" and isinstance(batch.created_at, int)
    assert batch.request_counts.total == 0 and batch.metadata == {"run": "1"}
    second = api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="1h")
    assert [b.id for b in api.batches.list(limit=1)] == [second.id, batch.id]

    # What the controller and the runner report shows up in the batch object.
    output = gateway.store.file_dir(namespace, "file-0000output0000")
    gateway.store.write_bytes(f"{output}/content", b'{"custom_id": "r0"}\n')
    gateway.store.write_json(f"{output}/meta.json", {
        "id": "file-0000output0000", "object": "file", "bytes": 20, "created_at": 1, "filename": "output.jsonl",
        "purpose": "batch_output", "status": "processed", "status_details": None, "expires_at": None})
    _set_status(api_client, namespace, "batchjobs", batch.id, {
        "phase": "Completed", "requestCounts": {"total": 3, "completed": 3, "failed": 0},
        "outputFile": "file-0000output0000", "completedAt": "2030-01-01T00:00:00Z",
        "inProgressAt": "2029-12-31T23:00:00Z"})
    done = api.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3
    assert done.completed_at == 1893456000 and done.in_progress_at == 1893452400
    assert api.files.content(done.output_file_id).content == b'{"custom_id": "r0"}\n'
    with pytest.raises(openai.BadRequestError):
        api.batches.cancel(batch.id)

    cancelling = api.batches.cancel(second.id)
    assert cancelling.status == "cancelling"
    assert client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "batchjobs", second.id)["spec"]["cancel"] is True


def test_batch_create_errors(tenant) -> None:
    _, api = tenant
    good = api.files.create(file=("b.jsonl", io.BytesIO(batch_lines())), purpose="batch")
    dup = api.files.create(file=("b.jsonl", io.BytesIO(batch_lines() + batch_lines(1))), purpose="batch")
    assert dup.status == "error"
    cases = [
        (dict(input_file_id=dup.id), "duplicate_custom_id", "input_file_id"),
        (dict(input_file_id=good.id, endpoint="/v1/embeddings"), "invalid_endpoint", "endpoint"),
        (dict(input_file_id=good.id, completion_window="2h"), "invalid_completion_window", "completion_window"),
    ]
    for kwargs, code, param in cases:
        args = {"endpoint": "/v1/chat/completions", "completion_window": "24h", **kwargs}
        with pytest.raises(openai.BadRequestError) as exc:
            api.batches.create(**args)
        assert (exc.value.code, exc.value.param) == (code, param)


def test_models_list_retrieve_delete(tenant, base_model, gateway, api_client) -> None:
    namespace, api = tenant
    train = api.files.create(file=("t.jsonl", io.BytesIO(training_lines())), purpose="fine-tune")
    job = api.fine_tuning.jobs.create(model=base_model, training_file=train.id, suffix="m")
    model_id = f"ft:{base_model}:{namespace}:m:{job.id}"
    assert model_id not in {m.id for m in api.models.list()}
    _set_status(api_client, namespace, "finetuningjobs", job.id,
                {"phase": "Succeeded", "fineTunedModel": model_id, "finishedAt": "2030-01-01T00:00:00Z"})

    models = {m.id: m for m in api.models.list()}
    assert models[base_model].to_dict()["fine_tunable"] is True and models[model_id].owned_by == namespace
    assert api.models.retrieve(model_id).id == model_id
    assert api.models.retrieve(base_model).owned_by == "HuggingFaceTB"
    assert api.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == model_id
    with pytest.raises(openai.PermissionDeniedError):
        api.models.delete(base_model)

    assert api.models.delete(model_id).deleted is True
    assert model_id not in {m.id for m in api.models.list()}
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve(model_id)


def test_keys_scopes_and_tenant_isolation(gateway, namespace, api_client, base_model) -> None:
    core = client.CoreV1Api(api_client)
    other_ns = namespace + "-b"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other_ns)))
    try:
        owner = gateway.client(gateway.key(namespace))
        intruder = gateway.client(gateway.key(other_ns))
        upload = owner.files.create(file=("t.jsonl", io.BytesIO(training_lines())), purpose="fine-tune")
        job = owner.fine_tuning.jobs.create(model=base_model, training_file=upload.id)
        batch_file = owner.files.create(file=("b.jsonl", io.BytesIO(batch_lines())), purpose="batch")
        batch = owner.batches.create(input_file_id=batch_file.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
        for call in (
            lambda: intruder.files.retrieve(upload.id),
            lambda: intruder.files.content(upload.id),
            lambda: intruder.files.delete(upload.id),
            lambda: intruder.fine_tuning.jobs.retrieve(job.id),
            lambda: intruder.fine_tuning.jobs.cancel(job.id),
            lambda: intruder.fine_tuning.jobs.list_events(job.id),
            lambda: intruder.batches.retrieve(batch.id),
            lambda: intruder.batches.cancel(batch.id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert intruder.files.list().data == [] and intruder.fine_tuning.jobs.list().data == []
        assert intruder.batches.list().data == []
        # Another tenant's file cannot be trained on either.
        with pytest.raises(openai.BadRequestError) as exc:
            intruder.fine_tuning.jobs.create(model=base_model, training_file=upload.id)
        assert exc.value.param == "training_file"

        reader = gateway.client(gateway.key(namespace, ["files:read", "fine-tuning:read"]))
        assert reader.files.retrieve(upload.id).id == upload.id
        with pytest.raises(openai.PermissionDeniedError) as denied:
            reader.fine_tuning.jobs.cancel(job.id)
        assert denied.value.code == "insufficient_scope"
        with pytest.raises(openai.PermissionDeniedError):
            reader.chat.completions.create(model=base_model, messages=[{"role": "user", "content": "hi"}])
    finally:
        core.delete_namespace(other_ns, propagation_policy="Background")


def test_missing_invalid_and_revoked_keys(gateway, namespace, raw) -> None:
    with pytest.raises(openai.AuthenticationError) as exc:
        gateway.client("tf-not-a-real-key").models.list()
    assert exc.value.code == "invalid_api_key"
    response = raw.get("/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
    assert response.headers["x-request-id"]

    created = subprocess.run(
        [sys.executable, "-m", "tuneforge", "keys", "create", "--namespace", namespace, "--scopes", "models:read"],
        check=True, capture_output=True, text=True)
    key = created.stdout.strip()
    assert key.startswith("tf-")
    assert raw.get("/v1/models", headers={"X-API-Key": key}).status_code == 200
    secrets = client.CoreV1Api(gateway.api_client).list_namespaced_secret(
        settings().system_namespace, label_selector=f"tuneforge.io/tenant={namespace}")
    assert key not in str(secrets.to_dict())

    subprocess.run([sys.executable, "-m", "tuneforge", "keys", "revoke", "--key", key], check=True, capture_output=True)
    with pytest.raises(openai.AuthenticationError):
        gateway.client(key).models.list()


def test_every_documented_way_of_sending_the_key(gateway, namespace, raw) -> None:
    """Bearer (the openai client), a bare key (the reference curl examples) and X-API-Key
    (the management API's document), on both APIs; another scheme is no key at all."""
    key = gateway.key(namespace)
    for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": key}, {"authorization": f"bearer {key}"},
                    {"X-API-Key": key}):
        assert raw.get("/v1/models", headers=headers).status_code == 200, headers
        assert raw.get("/api/v1/fine-tuning/jobs", headers=headers).status_code == 200, headers
    for headers, code in (({"Authorization": f"Basic {key}"}, "missing_api_key"),
                          ({"Authorization": ""}, "missing_api_key"),
                          ({"Authorization": "Bearer"}, "missing_api_key"),
                          ({"X-API-Key": ""}, "missing_api_key"),
                          ({"Authorization": "tf-not-a-real-key"}, "invalid_api_key"),
                          ({"Authorization": f"Bearer {key} extra"}, "missing_api_key")):
        for path in ("/v1/models", "/api/v1/fine-tuning/jobs"):
            response = raw.get(path, headers=headers)
            error = response.json()["error"]
            assert (response.status_code, error["type"], error["code"]) == (401, "authentication_error", code), headers
            assert code == "invalid_api_key" or "'X-API-Key: <key>'" in error["message"], error


def test_documented_limits(tenant, base_model) -> None:
    """Job, event, checkpoint and batch lists take `limit` 1-100 (the files list 1-10,000,
    as OpenAI's) and chat at most 4 stop sequences, as the reference says; the gateway
    checks the stop count before any engine sees the request."""
    _, api = tenant
    for listing, most in ((api.fine_tuning.jobs.list, 100), (api.batches.list, 100), (api.files.list, 10_000)):
        for limit in (0, most + 1):
            with pytest.raises(openai.BadRequestError) as exc:
                listing(limit=limit)
            assert (exc.value.param, exc.value.type, exc.value.code) == ("limit", "invalid_request_error",
                                                                        "invalid_value")
        assert listing(limit=most).object == "list"
    for listing in (api.fine_tuning.jobs.list_events, api.fine_tuning.jobs.checkpoints.list):
        with pytest.raises(openai.BadRequestError) as exc:
            listing("ftjob-0000deadbeef", limit=101)
        assert (exc.value.param, exc.value.code) == ("limit", "invalid_value")
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=base_model, messages=[{"role": "user", "content": "hi"}],
                                    stop=["a", "b", "c", "d", "e"])
    assert (exc.value.param, exc.value.code) == ("stop", "invalid_value")
