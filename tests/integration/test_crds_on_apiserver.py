"""The generated CRDs on a real kube-apiserver: install, discovery, explain, validation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from tuneforge.local.controlplane import ControlPlane, ControlPlaneError

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _retry_kubectl(plane: ControlPlane, *args: str, attempts: int = 20):
    """kubectl's discovery cache can trail a just-established CRD by a moment."""
    for _ in range(attempts):
        result = plane.kubectl(*args, check=False)
        if result.returncode == 0:
            return result
        time.sleep(0.5)
    raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")


def _manifest(kind: str, name: str, namespace: str, spec: dict) -> str:
    document = {"apiVersion": "tuneforge.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    if kind != "BaseModel":
        document["metadata"]["namespace"] = namespace
    return yaml.safe_dump(document)


def test_kubectl_get_by_short_names_and_category(control_plane, namespace):
    result = _retry_kubectl(control_plane, "get", "ftjob,bjob,mdep", "-n", namespace)
    assert "No resources found" in result.stderr + result.stdout
    # BaseModels are cluster-scoped; other tests may have left some behind.
    assert _retry_kubectl(control_plane, "get", "bm").returncode == 0
    assert _retry_kubectl(control_plane, "get", "tuneforge", "-A").returncode == 0


def test_kubectl_explain_shows_field_docs(control_plane):
    result = _retry_kubectl(control_plane, "explain", "finetuningjob.spec")
    assert "Resource name of a BaseModel in the catalog" in result.stdout
    model_id = _retry_kubectl(control_plane, "explain", "basemodel.spec.modelId")
    assert "The id users call the model by" in model_id.stdout
    hyper = _retry_kubectl(control_plane, "explain", "finetuningjob.spec.hyperparameters.nEpochs")
    assert "Passes over the training data" in hyper.stdout
    strategy = _retry_kubectl(control_plane, "explain", "finetuningjob.spec.distributed.strategy")
    assert "auto picks fsdp when" in strategy.stdout


def test_examples_apply_cleanly(control_plane, namespace):
    result = control_plane.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples"))
    assert "created" in result.stdout
    listing = control_plane.kubectl("get", "ftjob,bjob,mdep", "-n", namespace, "-o", "name").stdout.split()
    assert len(listing) == 4
    nodes = control_plane.kubectl("get", "ftjob", "ftjob-0123456789abcd02", "-n", namespace,
                                  "-o", "jsonpath={.spec.hardware.nodes}").stdout
    assert nodes == "2"
    columns = control_plane.kubectl("get", "ftjob", "-n", namespace).stdout.splitlines()[0].split()
    assert columns[:3] == ["NAME", "PHASE", "BASE"]
    header, row = control_plane.kubectl("get", "bm", "smollm2-135m-instruct").stdout.splitlines()
    assert header.split()[:3] == ["NAME", "MODEL", "ID"]
    assert row.split()[:2] == ["smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"]


@pytest.mark.parametrize(
    ("kind", "spec", "expected"),
    [
        (
            "FineTuningJob",
            {"baseModel": "m", "trainingFile": "file-0123456789", "hyperparameters": {"nEpochs": -1}},
            "nEpochs must be 'auto' or an integer >= 1",
        ),
        (
            "FineTuningJob",
            {"baseModel": "m", "trainingFile": "file-0123456789", "hyperparameters": {"batchSize": "lots"}},
            "batchSize must be 'auto' or an integer >= 1",
        ),
        ("FineTuningJob", {"baseModel": "m", "trainingFile": "http://x/y"}, "spec.trainingFile"),
        ("FineTuningJob", {"trainingFile": "file-0123456789"}, "spec.baseModel: Required value"),
        # A BaseModel reference is a DNS label: no BaseModel over 63 characters can be used.
        ("FineTuningJob", {"baseModel": "m" * 64, "trainingFile": "file-0123456789"}, "spec.baseModel: Too long"),
        (
            "FineTuningJob",
            {"baseModel": "m", "trainingFile": "file-0123456789", "method": {"lora": {"rank": 0}}},
            "spec.method.lora.rank",
        ),
        ("BatchJob", {"inputFile": "file-0123456789", "completionWindow": "2h"}, "spec.completionWindow"),
        ("ModelDeployment", {"baseModel": "m", "engine": "tensorrt"}, "spec.engine"),
        ("ModelDeployment", {"baseModel": "m" * 64}, "spec.baseModel: Too long"),
        ("ModelDeployment", {"baseModel": "m", "replicas": -1}, "spec.replicas"),
        ("ModelDeployment", {"baseModel": "m", "rollout": {"maxUnavailable": 0}},
         "maxSurge and maxUnavailable cannot both be 0"),
        ("ModelDeployment", {"baseModel": "m", "autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
         "spec.autoscaling.minReplicas: Invalid value: \"object\": minReplicas must not exceed maxReplicas"),
        ("ModelDeployment", {"baseModel": "m", "autoscaling": {"maxReplicas": 2, "targetInFlight": -4}},
         "spec.autoscaling.targetInFlight: Invalid value: -4: spec.autoscaling.targetInFlight in body should be"),
        ("ModelDeployment", {"baseModel": "m", "autoscaling": {"maxReplicas": 2, "scaleDownDelaySeconds": -1}},
         "spec.autoscaling.scaleDownDelaySeconds"),
        ("ModelDeployment", {"baseModel": "m", "autoscaling": {"minReplicas": 0}}, "spec.autoscaling.maxReplicas: Required"),
        ("BaseModel", {"source": {"uri": "file:///m"}, "serving": {"autoscaling": {"minReplicas": 2, "maxReplicas": 1}}},
         "minReplicas must not exceed maxReplicas"),
        ("BaseModel", {"source": {"uri": "file:///m"}, "serving": {"startupTimeoutSeconds": 5}},
         "spec.serving.startupTimeoutSeconds"),
        ("BaseModel", {"source": {"uri": "ftp://weights"}}, "spec.source.uri"),
        ("BaseModel", {"source": {"uri": "file:///m"}, "modelId": "ft:Org/Model:team::ftjob-1"}, "spec.modelId"),
    ],
)
def test_server_side_validation_names_the_field(control_plane, namespace, kind, spec, expected):
    name = "bad-" + kind.lower()
    with pytest.raises(ControlPlaneError) as failure:
        control_plane.kubectl("apply", "-f", "-", input=_manifest(kind, name, namespace, spec))
    assert expected in str(failure.value)


def test_immutable_fields_cannot_change(control_plane, namespace):
    spec = {"baseModel": "smollm2", "trainingFile": "file-0123456789"}
    control_plane.kubectl("apply", "-f", "-", input=_manifest("FineTuningJob", "ftjob-immutable", namespace, spec))
    for field, value in (("baseModel", "other-model"), ("trainingFile", "file-9999999999")):
        changed = {**spec, field: value}
        with pytest.raises(ControlPlaneError, match=f"{field} is immutable"):
            control_plane.kubectl(
                "apply", "-f", "-", input=_manifest("FineTuningJob", "ftjob-immutable", namespace, changed)
            )
    # Fields that are not immutable still change (suspend is how a job is paused).
    control_plane.kubectl(
        "apply", "-f", "-", input=_manifest("FineTuningJob", "ftjob-immutable", namespace, {**spec, "suspend": True})
    )


def test_defaults_are_applied_by_the_server(control_plane, namespace):
    spec = {"baseModel": "smollm2", "trainingFile": "file-0123456789"}
    control_plane.kubectl("apply", "-f", "-", input=_manifest("FineTuningJob", "ftjob-defaults", namespace, spec))
    stored = yaml.safe_load(control_plane.kubectl("get", "ftjob", "ftjob-defaults", "-n", namespace, "-o", "yaml").stdout)
    assert stored["spec"]["hyperparameters"]["nEpochs"] == "auto"
    assert stored["spec"]["method"]["lora"]["rank"] == 8
    assert stored["spec"]["suspend"] is False


def test_status_is_a_subresource(control_plane, namespace, api_client):
    from kubernetes import client

    spec = {"inputFile": "file-0123456789"}
    control_plane.kubectl("apply", "-f", "-", input=_manifest("BatchJob", "batch-status", namespace, spec))
    custom = client.CustomObjectsApi(api_client)
    custom.patch_namespaced_custom_object_status(
        "tuneforge.io", "v1alpha1", namespace, "batchjobs", "batch-status",
        {"status": {"phase": "InProgress", "requestCounts": {"total": 3, "completed": 1, "failed": 0}}},
    )
    # A write to the main resource cannot touch status.
    custom.patch_namespaced_custom_object(
        "tuneforge.io", "v1alpha1", namespace, "batchjobs", "batch-status", {"status": {"phase": "Completed"}}
    )
    stored = custom.get_namespaced_custom_object("tuneforge.io", "v1alpha1", namespace, "batchjobs", "batch-status")
    assert stored["status"]["phase"] == "InProgress"
    printed = control_plane.kubectl("get", "bjob", "batch-status", "-n", namespace).stdout
    assert "InProgress" in printed and "3" in printed
