"""Model ids with the operator running: a BaseModel claiming the model id an older entry
holds is refused (Ready=False, DuplicateModelId, naming the holder) until the holder is
gone; a job on the refused entry fails saying so; and a job on the holder trains and
succeeds under a fine-tuned id that names the base by its model id."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tuneforge.contracts import TrainingRun

from tests.support.apiserver import GROUP, VERSION, Kube, wait_for
from tests.support.operator_process import Operator
from tests.support.store_layout import chat_example, upload, write_json

pytestmark = pytest.mark.integration

MODEL_ID = "Org/Model-1.5B-Instruct"


def _phase(kube: Kube, namespace: str | None, plural: str, name: str) -> str | None:
    return kube.status(namespace, plural, name).get("phase")


def _ready_condition(kube: Kube, name: str) -> dict:
    return next(c for c in kube.status(None, "basemodels", name).get("conditions") or [] if c["type"] == "Ready")


@pytest.fixture
def catalog(kube: Kube, tmp_path: Path, operator: Operator) -> Iterator[tuple[str, str]]:
    """(the Ready entry holding MODEL_ID, a younger entry claiming it too)."""
    weights = tmp_path / "weights"
    weights.mkdir()
    name = f"org-model-{uuid.uuid4().hex[:8]}"
    entries = [name, f"{name}-copy"]
    for entry in entries:
        kube.create(None, "basemodels", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "BaseModel", "metadata": {"name": entry},
            "spec": {"modelId": MODEL_ID, "source": {"uri": f"file://{weights}"}, "sharedDeployment": False,
                     "serving": {"engine": "cpu"}, "parameterCount": 1_500_000_000},
        })
        wait_for(lambda entry=entry: _phase(kube, None, "basemodels", entry), 30, f"BaseModel {entry} checked",
                 operator)
    yield name, entries[1]
    for entry in entries:
        try:
            kube.custom.delete_cluster_custom_object(GROUP, VERSION, "basemodels", entry)
        except client.ApiException as exc:
            if exc.status != 404:  # the test deleted it
                raise


def _job(kube: Kube, store_root: Path, namespace: str, base: str, **spec: object) -> str:
    file_id = f"file-{uuid.uuid4().hex[:12]}"
    upload(store_root, namespace, file_id, [chat_example(i) for i in range(12)])
    name = f"ftjob-{uuid.uuid4().hex[:10]}"
    kube.create(namespace, "finetuningjobs", {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuningJob",
                                              "metadata": {"name": name},
                                              "spec": {"baseModel": base, "trainingFile": file_id, **spec}})
    return name


def test_a_duplicate_model_id_is_refused_until_its_holder_is_gone(kube: Kube, operator: Operator, namespace: str,
                                                                  store_root: Path, catalog: tuple[str, str]) -> None:
    holder, copy = catalog
    assert _phase(kube, None, "basemodels", holder) == "Ready"
    assert _phase(kube, None, "basemodels", copy) == "Failed"
    refused = _ready_condition(kube, copy)
    assert (refused["status"], refused["reason"]) == ("False", "DuplicateModelId")
    assert repr(holder) in refused["message"] and repr(MODEL_ID) in refused["message"]

    on_copy = _job(kube, store_root, namespace, copy)
    wait_for(lambda: _phase(kube, namespace, "finetuningjobs", on_copy) == "Failed", 30, "job on the copy fails",
             operator)
    error = kube.status(namespace, "finetuningjobs", on_copy)["error"]
    assert error["code"] == "model_not_available" and repr(holder) in error["message"]

    kube.custom.delete_cluster_custom_object(GROUP, VERSION, "basemodels", holder)
    wait_for(lambda: _phase(kube, None, "basemodels", copy) == "Ready", 30, "the copy Ready once alone", operator)
    assert _ready_condition(kube, copy)["reason"] == "SourceResolved"


def test_a_fine_tuned_id_names_the_base_by_model_id(kube: Kube, operator: Operator, namespace: str, store_root: Path,
                                                    catalog: tuple[str, str]) -> None:
    holder, _ = catalog
    name = _job(kube, store_root, namespace, holder, suffix="ids")
    expected = f"ft:{MODEL_ID}:{namespace}:ids:{name}"
    wait_for(lambda: _phase(kube, namespace, "finetuningjobs", name) == "Queued", 30, "Queued", operator)
    run = TrainingRun.model_validate_json(kube.core.read_namespaced_config_map(f"{name}-run", namespace).data["run.json"])
    assert run.fine_tuned_model == expected and run.base_model == holder

    pod = wait_for(lambda: kube.pods(namespace, f"tuneforge.io/fine-tuning-job={name}"), 30, "trainer Pod", operator)
    job_dir = store_root / namespace / "fine-tuning" / name
    write_json(job_dir / "result.json", {"fine_tuned_model": run.fine_tuned_model, "adapter_uri": f"file://{job_dir}/adapter",
                                         "trained_tokens": 100, "steps": 3, "epochs": 1, "hyperparameters": {}})
    kube.set_pod(namespace, pod[0].metadata.name, "trainer", phase="Succeeded", exit_code=0)
    wait_for(lambda: _phase(kube, namespace, "finetuningjobs", name) == "Succeeded", 60, "Succeeded", operator)
    assert kube.status(namespace, "finetuningjobs", name)["fineTunedModel"] == expected
