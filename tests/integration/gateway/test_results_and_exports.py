"""A succeeded job's results file and adapter download, over real HTTP against the real API
server: the trainer's outputs are written into the store as the trainer writes them (a
real peft adapter on the tiny model) and the job's status is set as the controller sets it.
The results file through the official openai client's files API; the adapter and merged
archives through both APIs; every refusal in OpenAI's error shape."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import torch
from gateway_testkit import training_lines
from kubernetes import client
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.jobfiles import JobFiles

from tests.support.lora import make_adapter

pytestmark = pytest.mark.integration

CSV = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,2.5,0.1,,\n2,2.0,0.2,,\n"
MANAGEMENT = "/api/v1/fine-tuning"


@dataclass
class Finished:
    namespace: str
    api: openai.OpenAI
    key: str
    job: str
    adapter: Path
    """The adapter directory the trainer published, as written."""

    @property
    def results(self) -> str:
        return f"file-results-{self.job}"


def _custom(api_client) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def _create_job(api: openai.OpenAI, base_model: str) -> str:
    upload = api.files.create(file=("train.jsonl", io.BytesIO(training_lines())), purpose="fine-tune")
    return api.fine_tuning.jobs.create(model=base_model, training_file=upload.id).id


@pytest.fixture
def finished(gateway, namespace, base_model, api_client, tiny_model_dir, tmp_path) -> Finished:
    """A job of `namespace` that succeeded: results.csv and a real adapter in the store,
    status as the controller writes it."""
    key = gateway.key(namespace)
    api = gateway.client(key)
    job = _create_job(api, base_model)
    files = JobFiles.of(gateway.store, namespace, job)
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=3)
    for path in adapter.iterdir():
        gateway.store.write_bytes(files.path("adapter", path.name), path.read_bytes())
    _custom(api_client).patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "finetuningjobs", job, {
        "status": {"phase": "Succeeded", "finishedAt": "2024-05-06T07:08:09Z", "resultFiles": [
            files.write_results_csv(CSV)], "fineTunedModel": f"ft:{base_model}:{namespace}::{job}"}})
    return Finished(namespace, api, key, job, adapter)


@pytest.fixture
def intruder(gateway, namespace, api_client) -> Iterator[tuple[openai.OpenAI, str]]:
    """Another tenant: its openai client and key."""
    core = client.CoreV1Api(api_client)
    other = namespace + "-b"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    key = gateway.key(other)
    yield gateway.client(key), key
    core.delete_namespace(other, propagation_policy="Background")


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_the_results_file_is_a_file_of_the_tenant(finished, gateway, intruder) -> None:
    api, results = finished.api, finished.results
    assert api.fine_tuning.jobs.retrieve(finished.job).result_files == [results]
    assert [job.result_files for job in api.fine_tuning.jobs.list()] == [[results]]

    file = api.files.retrieve(results)
    assert (file.id, file.bytes, file.filename, file.purpose, file.status, file.created_at) == (
        results, len(CSV), f"{finished.job}-results.csv", "fine-tune-results", "processed", 1714979289)
    content = api.files.content(results)
    assert content.text == CSV
    assert content.response.headers["content-disposition"] == f'attachment; filename="{finished.job}-results.csv"'

    assert [f.id for f in api.files.list(purpose="fine-tune-results")] == [results]
    everything = api.files.list().data
    assert results in {f.id for f in everything} and {f.purpose for f in everything} == {
        "fine-tune", "fine-tune-results"}
    assert results not in {f.id for f in api.files.list(purpose="fine-tune")}
    assert "store" not in file.model_dump_json() and "://" not in file.model_dump_json()

    other, _ = intruder
    for call in (lambda: other.files.retrieve(results), lambda: other.files.content(results),
                 lambda: other.files.delete(results)):
        with pytest.raises(openai.NotFoundError) as exc:
            call()
        assert exc.value.code == "file_not_found"
    assert other.files.list().data == []

    jobs_only = gateway.client(gateway.key(finished.namespace, ["fine-tuning:read"]))
    with pytest.raises(openai.PermissionDeniedError):
        jobs_only.files.content(results)

    assert api.files.delete(results).deleted
    for call in (lambda: api.files.retrieve(results), lambda: api.files.content(results),
                 lambda: api.files.delete(results)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert api.files.list(purpose="fine-tune-results").data == []
    assert api.fine_tuning.jobs.retrieve(finished.job).result_files == [results]
    assert not gateway.store.exists(JobFiles.of(gateway.store, finished.namespace, finished.job).path("results.csv"))


def test_a_job_without_results_has_no_results_file(gateway, namespace, base_model) -> None:
    api = gateway.client(gateway.key(namespace))
    job = _create_job(api, base_model)
    assert api.fine_tuning.jobs.retrieve(job).result_files == []
    for file_id in (f"file-results-{job}", "file-results-ftjob-doesnotexist", "file-results-Not_A_Name"):
        with pytest.raises(openai.NotFoundError) as exc:
            api.files.retrieve(file_id)
        assert (exc.value.code, exc.value.param) == ("file_not_found", "file_id")
    assert api.files.list(purpose="fine-tune-results").data == []


def _extract(data: bytes, into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        tar.extractall(into, filter="data")


def test_the_adapter_downloads_and_loads_with_peft(finished, gateway, raw, tiny_model_dir, tmp_path) -> None:
    response = raw.get(f"/v1/fine_tuning/jobs/{finished.job}/adapter",
                       headers={"Authorization": f"Bearer {finished.key}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    assert response.headers["content-disposition"] == f'attachment; filename="{finished.job}-adapter.tar"'
    assert int(response.headers["content-length"]) == len(response.content)
    _extract(response.content, tmp_path)
    downloaded = tmp_path / f"{finished.job}-adapter"
    assert sorted(p.name for p in downloaded.iterdir()) == sorted(p.name for p in finished.adapter.iterdir())

    published = load_file(finished.adapter / "adapter_model.safetensors")
    got = load_file(downloaded / "adapter_model.safetensors")
    assert published.keys() == got.keys() and all(torch.equal(published[k], got[k]) for k in published)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), downloaded)
    loaded = get_peft_model_state_dict(model)
    assert loaded.keys() == published.keys() and all(torch.equal(loaded[k], published[k]) for k in published)

    management = raw.get(f"{MANAGEMENT}/jobs/{finished.job}/adapter", headers={"X-API-Key": finished.key})
    assert management.status_code == 200 and management.content == response.content


def test_the_merged_model_downloads_only_when_the_job_made_one(finished, gateway, raw, api_client,
                                                               tmp_path) -> None:
    headers = {"Authorization": f"Bearer {finished.key}"}
    openai_path, management_path = (f"/v1/fine_tuning/jobs/{finished.job}/merged_model",
                                    f"{MANAGEMENT}/jobs/{finished.job}/merged-model")
    error = _error(raw.get(openai_path, headers=headers), 404)
    assert (error["code"], error["param"], error["type"]) == (
        "merged_model_not_found", "fine_tuning_job_id", "invalid_request_error")
    assert _error(raw.get(management_path, headers=headers), 404)["param"] == "id"

    _custom(api_client).patch_namespaced_custom_object(GROUP, VERSION, finished.namespace, "finetuningjobs",
                                                       finished.job, {"spec": {"mergeAdapter": True}})
    error = _error(raw.get(openai_path, headers=headers), 404)
    assert error["code"] == "merged_model_not_found" and "not in the artifact store" in error["message"]
    merged = JobFiles.of(gateway.store, finished.namespace, finished.job).path("merged")
    gateway.store.write_bytes(f"{merged}/config.json", b'{"model_type": "llama"}')
    gateway.store.write_bytes(f"{merged}/model.safetensors", b"weights")
    response = raw.get(openai_path, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == f'attachment; filename="{finished.job}-merged.tar"'
    _extract(response.content, tmp_path)
    assert (tmp_path / f"{finished.job}-merged" / "model.safetensors").read_bytes() == b"weights"

    assert raw.get(management_path, headers=headers).content == response.content

    finished.api.models.delete(finished.api.fine_tuning.jobs.retrieve(finished.job).fine_tuned_model)
    assert not gateway.store.exists(merged), "deleting the model deletes its merged weights too"
    assert _error(raw.get(openai_path, headers={"Authorization": f"Bearer {finished.key}"}), 404)["code"] == (
        "merged_model_not_found")


def test_downloads_are_refused_in_openai_error_shape(finished, gateway, raw, base_model, intruder) -> None:
    headers = {"Authorization": f"Bearer {finished.key}"}
    running = _create_job(finished.api, base_model)
    error = _error(raw.get(f"/v1/fine_tuning/jobs/{running}/adapter", headers=headers), 400)
    assert (error["code"], error["param"]) == ("invalid_job_state", "fine_tuning_job_id")
    assert "validating_files" in error["message"]
    error = _error(raw.get(f"{MANAGEMENT}/jobs/{running}/adapter", headers=headers), 409)
    assert (error["code"], error["param"]) == ("invalid_job_state", "id")

    _, other_key = intruder
    for key, job in ((finished.key, "ftjob-0123456789abcdef"), (other_key, finished.job)):
        error = _error(raw.get(f"/v1/fine_tuning/jobs/{job}/adapter", headers={"Authorization": f"Bearer {key}"}),
                       404)
        assert error["code"] == "fine_tuning_job_not_found"
        assert _error(raw.get(f"{MANAGEMENT}/jobs/{job}/adapter", headers={"X-API-Key": key}), 404)["param"] == "id"

    files_only = gateway.key(finished.namespace, ["files:*"])
    error = _error(raw.get(f"/v1/fine_tuning/jobs/{finished.job}/adapter",
                           headers={"Authorization": f"Bearer {files_only}"}), 403)
    assert error["code"] == "insufficient_scope"

    finished.api.models.delete(finished.api.fine_tuning.jobs.retrieve(finished.job).fine_tuned_model)
    error = _error(raw.get(f"/v1/fine_tuning/jobs/{finished.job}/adapter", headers=headers), 404)
    assert error["code"] == "adapter_not_found" and "was deleted" in error["message"]
