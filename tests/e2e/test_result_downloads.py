"""What a user takes home from a job trained on the local platform: its results file through
the official openai client's files API, its adapter through docs/api.md's own example
(downloaded, extracted, loaded with peft onto the tiny base model), and its merged model.
One job, applied as a manifest with `mergeAdapter: true` as a platform team would, serves
every test of the module."""

from __future__ import annotations

import csv
import io
import re
import tarfile
import uuid
from pathlib import Path

import httpx
import openai
import pytest
import torch
from kubernetes import client
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.local.devstack import TINY, DevStack, tiny_model_dir

from tests.support.devstack import (
    final_job,
    json_training_rows,
    management_api,
    step_events,
    store_path,
    upload_jsonl,
)

pytestmark = pytest.mark.e2e

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
RESULTS_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]


@pytest.fixture(scope="module")
def job_id(dev_stack: DevStack, openai_client: openai.OpenAI) -> str:
    """A succeeded job of the dev tenant that also published a merged model: 12 rows, batch
    size 4, one epoch, so 3 steps."""
    training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(12), "fine-tune")
    name = f"ftjob-{uuid.uuid4().hex[:24]}"
    client.CustomObjectsApi(dev_stack.api_client).create_namespaced_custom_object(
        GROUP, VERSION, dev_stack.tenant, "finetuningjobs", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuningJob",
            "metadata": {"name": name, "namespace": dev_stack.tenant},
            "spec": {"baseModel": TINY, "trainingFile": training_file, "mergeAdapter": True,
                     "hyperparameters": {"nEpochs": 1, "batchSize": 4}},
        })
    job = final_job(openai_client, name)
    assert job.status == "succeeded", job.error
    return name


def published(dev_stack: DevStack, job: str, *parts: str) -> Path:
    return store_path(dev_stack, dev_stack.tenant, "fine-tuning", job, *parts)


def test_the_results_file_holds_one_row_per_logged_step(job_id: str, openai_client: openai.OpenAI) -> None:
    [results] = openai_client.fine_tuning.jobs.retrieve(job_id).result_files
    text = openai_client.files.content(results).text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == RESULTS_COLUMNS
    assert [int(row[0]) for row in rows[1:]] == step_events(openai_client, job_id) == [1, 2, 3]
    assert all(float(row[1]) > 0 for row in rows[1:])

    file = openai_client.files.retrieve(results)
    assert (file.id, file.bytes, file.purpose, file.status) == (results, len(text.encode()), "fine-tune-results",
                                                               "processed")
    assert results in {f.id for f in openai_client.files.list(purpose="fine-tune-results")}


def documented_example() -> str:
    """The Python example of docs/api.md's "Exporting the adapter"."""
    section = API_DOC.read_text().split("## Exporting the adapter", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_documented_example_downloads_an_adapter_peft_loads(
        job_id: str, dev_stack: DevStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = documented_example()
    for documented, actual in (("http://tuneforge-gateway:8000/v1", dev_stack.base_url),
                               ('"tf-..."', repr(dev_stack.api_key)), ('"ftjob-..."', repr(job_id)),
                               ('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(str(tiny_model_dir(dev_stack.settings))))):
        assert code.count(documented) == 1, documented
        code = code.replace(documented, actual)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/api.md", "exec"), scope)

    downloaded = tmp_path / f"{job_id}-adapter"
    adapter = published(dev_stack, job_id, "adapter")
    assert sorted(p.name for p in downloaded.iterdir()) == sorted(p.name for p in adapter.iterdir())
    expected = load_file(adapter / "adapter_model.safetensors")
    got = load_file(downloaded / "adapter_model.safetensors")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    model = scope["model"]
    assert isinstance(model, PeftModel)
    loaded = get_peft_model_state_dict(model)
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert any(bool(expected[k].abs().sum()) for k in expected if "lora_B" in k)  # trained, not peft's zero init


def test_the_merged_model_is_the_base_with_the_adapter_folded_in(job_id: str, dev_stack: DevStack,
                                                                 tmp_path: Path) -> None:
    with management_api(dev_stack) as http:
        response = http.get(f"/jobs/{job_id}/merged-model")
    assert response.status_code == 200, response.text
    openai_route = httpx.get(f"{dev_stack.base_url}/fine_tuning/jobs/{job_id}/merged_model", timeout=60,
                             headers={"Authorization": f"Bearer {dev_stack.api_key}"})
    assert openai_route.status_code == 200 and openai_route.content == response.content
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:") as tar:
        tar.extractall(tmp_path, filter="data")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / f"{job_id}-merged").state_dict()

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(dev_stack.settings))
    expected = PeftModel.from_pretrained(base, published(dev_stack, job_id, "adapter")).merge_and_unload().state_dict()
    assert merged.keys() == expected.keys()
    assert all(torch.allclose(merged[k], expected[k], atol=1e-6) for k in expected)
    folded = AutoModelForCausalLM.from_pretrained(tiny_model_dir(dev_stack.settings)).state_dict()
    assert any(not torch.equal(merged[k], folded[k]) for k in folded)  # the adapter changed the weights


def test_unknown_jobs_have_nothing_to_download(dev_stack: DevStack) -> None:
    with management_api(dev_stack) as http:
        response = http.get("/jobs/ftjob-0123456789abcdef/adapter")
    assert response.status_code == 404 and response.json()["error"]["param"] == "id"
