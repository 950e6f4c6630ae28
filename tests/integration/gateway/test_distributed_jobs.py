"""Both create APIs refuse a job no offered hardware can train, with the code and param the
FineTuningJob controller would fail it with (tuneforge.api.sizing), and store a possible
multi-node request as the job's spec."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from gateway_testkit import training_lines
from kubernetes import client

from tuneforge.config import settings

pytestmark = pytest.mark.integration
API = "/api/v1/fine-tuning"


@pytest.fixture
def hardware_profiles(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TUNEFORGE_HARDWARE_PROFILES", json.dumps([
        {"name": "h100-8x2", "gpuCount": 8, "gpuMemoryGb": 80, "maxNodes": 2},
        {"name": "l4", "gpuCount": 1, "gpuMemoryGb": 24},
    ]))
    settings.cache_clear()
    yield
    monkeypatch.undo()
    settings.cache_clear()


def spec_of(api_client: client.ApiClient, namespace: str, name: str) -> dict:
    return client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "tuneforge.io", "v1alpha1", namespace, "finetuningjobs", name)["spec"]


@pytest.mark.parametrize("extra,code,param", [
    ({"hardware": {"profile": "h100-8x2", "nodes": 3}}, "invalid_hardware", "hardware.nodes"),
    ({"hardware": {"gpu_count": 8, "nodes": 2}}, "invalid_hardware", "hardware.nodes"),
    ({"hardware": {"profile": "l4"}, "distributed": {"processes_per_node": 2}}, "invalid_distributed",
     "distributed.processes_per_node"),
    ({"hardware": {"profile": "h100-8x2", "gpu_count": 16}}, "invalid_hardware", "hardware.gpu_count"),
    ({"hardware": {"profile": "tpu"}}, "invalid_hardware_profile", "hardware.profile"),
])
def test_openai_create_refuses_what_no_profile_offers(tenant, base_model, hardware_profiles, extra: dict, code: str,
                                                      param: str) -> None:
    namespace, api = tenant
    train = api.files.create(file=("t.jsonl", io.BytesIO(training_lines())), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as exc:
        api.fine_tuning.jobs.create(model=base_model, training_file=train.id, extra_body=extra)
    assert (exc.value.status_code, exc.value.code, exc.value.param) == (400, code, param)
    assert exc.value.body["type"] == "invalid_request_error" and exc.value.body["message"]
    assert api.fine_tuning.jobs.list().data == []


def test_openai_create_stores_a_multi_node_request(tenant, base_model, hardware_profiles, api_client) -> None:
    namespace, api = tenant
    train = api.files.create(file=("t.jsonl", io.BytesIO(training_lines())), purpose="fine-tune")
    job = api.fine_tuning.jobs.create(model=base_model, training_file=train.id, extra_body={
        "hardware": {"profile": "h100-8x2", "nodes": 2}, "distributed": {"strategy": "fsdp", "processes_per_node": 4}})
    spec = spec_of(api_client, namespace, job.id)
    assert spec["hardware"] == {"profile": "h100-8x2", "nodes": 2}
    assert spec["distributed"] == {"strategy": "fsdp", "processesPerNode": 4, "maxGroupRestarts": 3}


@pytest.mark.parametrize("fields,code,param", [
    ({"hardware": {"profile": "h100-8x2", "nodes": 3}}, "invalid_hardware", "hardware.nodes"),
    ({"hardware": {"profile": "l4"}, "distributed": {"processesPerNode": 4}}, "invalid_distributed",
     "distributed.processesPerNode"),
    ({"hardware": {"profile": "h100-8x2", "gpuCount": 9}}, "invalid_hardware", "hardware.gpuCount"),
])
def test_management_create_refuses_with_its_own_field_names(gateway, namespace, raw: httpx.Client, base_model,
                                                            hardware_profiles, fields: dict, code: str,
                                                            param: str) -> None:
    headers = {"X-API-Key": gateway.key(namespace)}
    upload = raw.post("/v1/files", headers=headers, files={"file": ("t.jsonl", training_lines())},
                      data={"purpose": "fine-tune"})
    body = {"name": "big", "baseModel": base_model, "trainingDataset": upload.json()["id"], **fields}
    response = raw.post(f"{API}/jobs", headers=headers, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param) and error["message"]


def test_management_create_stores_a_multi_node_request(gateway, namespace, raw: httpx.Client, base_model,
                                                       hardware_profiles, api_client) -> None:
    headers = {"X-API-Key": gateway.key(namespace)}
    upload = raw.post("/v1/files", headers=headers, files={"file": ("t.jsonl", training_lines())},
                      data={"purpose": "fine-tune"})
    body = {"name": "big", "baseModel": base_model, "trainingDataset": upload.json()["id"],
            "hardware": {"profile": "h100-8x2", "nodes": 2}}
    response = raw.post(f"{API}/jobs", headers=headers, json=body)
    assert response.status_code == 201, response.text
    assert spec_of(api_client, namespace, response.json()["id"])["hardware"] == {"profile": "h100-8x2", "nodes": 2}
