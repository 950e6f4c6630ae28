"""Pure pieces of the gateway: pagination, error mapping, pod readiness, object rendering."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tuneforge.api.v1alpha1.modeldeployment import Rollout
from tuneforge.config import Settings
from tuneforge.contracts import Engine, ServingSpec
from tuneforge.controllers.builders import serving_deployment
from tuneforge.gateway.auth import presented_key
from tuneforge.gateway.batch_objects import batch_object
from tuneforge.gateway.errors import OpenAIError, _param
from tuneforge.gateway.fine_tuning_objects import job_object
from tuneforge.gateway.ids import derived_id, new_id
from tuneforge.gateway.pagination import page
from tuneforge.gateway.routing import _ready_pods
from tuneforge.gateway.settings import GatewaySettings


def test_page_walks_with_cursor_and_refuses_unknown_cursor() -> None:
    items = [SimpleNamespace(id=f"x{i}") for i in range(5)]
    first = page(items, after=None, limit=2)
    assert [o.id for o in first.data] == ["x0", "x1"] and first.has_more
    assert (first.first_id, first.last_id) == ("x0", "x1")
    last = page(items, after="x3", limit=2)
    assert [o.id for o in last.data] == ["x4"] and not last.has_more
    with pytest.raises(OpenAIError) as exc:
        page(items, after="nope", limit=2)
    assert exc.value.status == 400 and exc.value.param == "after"


def test_ids_are_time_ordered_and_idempotent_ids_deterministic() -> None:
    a, b = new_id("file"), new_id("file")
    assert a.startswith("file-") and len(a) == 29 and a[:17] <= b[:17]
    assert derived_id("batch", "ns", "k") == derived_id("batch", "ns", "k") != derived_id("batch", "other", "k")


def test_validation_param_drops_union_noise() -> None:
    assert _param(("body", "method", "supervised", "hyperparameters", "n_epochs", "int")) == (
        "method.supervised.hyperparameters.n_epochs")


def _pod(name: str, *, ready: bool = True, phase: str = "Running", ip: str | None = "10.0.0.1",
         ports: list | None = None, deleting: bool = False) -> dict:
    return {
        "metadata": {"name": name, "uid": name, **({"deletionTimestamp": "x"} if deleting else {})},
        "spec": {"containers": [{"ports": ports if ports is not None else [{"containerPort": 9000}]}]},
        "status": {"phase": phase, "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_only_ready_pods_route_with_declared_port() -> None:
    pods = _ready_pods([
        _pod("b", ports=[{"containerPort": 9100, "name": "metrics"}, {"containerPort": 8001, "name": "http"}]),
        _pod("a"), _pod("c", ready=False), _pod("d", phase="Pending"), _pod("e", ip=None), _pod("f", deleting=True),
        _pod("g", ports=[]),
    ])
    assert [(p.name, p.url) for p in pods] == [
        ("a", "http://10.0.0.1:9000"), ("b", "http://10.0.0.1:8001"), ("g", "http://10.0.0.1:8000")]


def test_adapter_loads_go_to_the_sidecar_port_when_the_pod_declares_one() -> None:
    http = {"containerPort": 8000, "name": "http"}
    vllm = _pod("vllm", ports=[http])
    vllm["spec"]["containers"].append({"ports": [{"containerPort": 8001, "name": "adapters"}]})
    cpu, sidecar = _ready_pods([_pod("cpu", ports=[http]), vllm])
    assert (cpu.url, cpu.load_url) == ("http://10.0.0.1:8000", "http://10.0.0.1:8000")
    assert (sidecar.url, sidecar.load_url) == ("http://10.0.0.1:8000", "http://10.0.0.1:8001")


def test_the_builders_serving_pod_routes_loads_to_its_sidecar() -> None:
    """The port names the builder declares are the ones the gateway looks for."""
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "team", "uid": "u"}, "spec": {"baseModel": "smol"}}
    serving = ServingSpec(deployment="chat", namespace="team", served_model_name="smol", base_model_uri="s3://b/m",
                          engine=Engine.vllm, gpu_count=1, adapter_loader_port=8123)
    deployment = serving_deployment(body, serving, replicas=1, hardware=None, rollout=Rollout(),
                                    startup_seconds=600, settings=Settings(store_root="s3://b/tf"))
    pod = _pod("p")
    pod["spec"] = deployment["spec"]["template"]["spec"]
    [ready] = _ready_pods([pod])
    assert (ready.url, ready.load_url) == ("http://10.0.0.1:8000", "http://10.0.0.1:8123")


def _job(**status) -> dict:
    return {
        "metadata": {"name": "ftjob-1", "namespace": "team", "creationTimestamp": "2030-01-01T00:00:00Z"},
        "spec": {"baseModel": "smol", "trainingFile": "file-12345678", "hyperparameters": {"nEpochs": 3, "seed": 9}},
        "status": status,
    }


def test_job_object_prefers_resolved_hyperparameters_and_maps_phase() -> None:
    job = job_object(_job(phase="Running", hyperparameters={"batchSize": 4})).model_dump()
    assert job["status"] == "running" and job["created_at"] == 1893456000 and job["seed"] == 9
    assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": "auto"}
    assert job_object(_job()).status == "validating_files"
    failed = job_object(_job(phase="Failed", error={"code": "invalid_n_examples", "message": "m"})).model_dump()
    assert failed["error"] == {"code": "invalid_n_examples", "message": "m", "param": None}


def test_batch_object_timestamps_are_integers() -> None:
    batch = batch_object({
        "metadata": {"name": "batch-1", "creationTimestamp": "2030-01-01T00:00:00Z"},
        "spec": {"inputFile": "file-12345678", "cancel": True},
        "status": {"phase": "InProgress", "expiresAt": "2030-01-02T00:00:00Z",
                   "errors": [{"code": "invalid_json_line", "message": "m", "line": 3}]},
    }).model_dump()
    assert batch["status"] == "cancelling" and batch["expires_at"] == 1893542400
    assert batch["errors"]["data"][0]["line"] == 3 and batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}


@pytest.mark.parametrize(("authorization", "x_api_key", "key"), [
    ("Bearer tf-1", None, "tf-1"), ("bearer tf-1", None, "tf-1"), ("BEARER  tf-1", None, "tf-1"), ("tf-1", None, "tf-1"),
    ("  tf-1 ", None, "tf-1"), (None, "tf-2", "tf-2"), ("Bearer tf-1", "tf-2", "tf-2"), ("Bearer tf-1", "  ", "tf-1"),
    ("Basic dXNlcjpwYXNz", " tf-2 ", "tf-2"),
])
def test_the_key_a_request_presents(authorization, x_api_key, key) -> None:
    assert presented_key(authorization, x_api_key) == key


@pytest.mark.parametrize(("authorization", "x_api_key", "says"), [
    (None, None, "You didn't provide an API key."), ("", "", "You didn't provide an API key."),
    ("   ", None, "You didn't provide an API key."),
    ("Bearer", None, "names the Bearer scheme but holds no single key"),
    ("Bearer  ", None, "names the Bearer scheme but holds no single key"),
    ("Bearer a b", None, "names the Bearer scheme but holds no single key"),
    ("Basic dXNlcjpwYXNz", None, "uses the 'Basic' scheme, which carries no API key"),
    ("Token tf-1", "", "uses the 'Token' scheme"),
])
def test_a_request_without_a_usable_key_is_told_how_to_send_one(authorization, x_api_key, says) -> None:
    """Another scheme's credentials are never taken for a key; the 401 says what was wrong."""
    with pytest.raises(OpenAIError) as exc:
        presented_key(authorization, x_api_key)
    assert (exc.value.status, exc.value.type, exc.value.code) == (401, "authentication_error", "missing_api_key")
    assert says in exc.value.message and "'Authorization: Bearer <key>'" in exc.value.message


def test_batch_files_may_be_6_gib_and_training_files_512_mib() -> None:
    """The reference API's batch limit; training files stay at what the trainer holds in memory."""
    defaults = GatewaySettings()
    assert (defaults.upload_limit("batch"), defaults.upload_limit("fine-tune")) == (6 * 1024**3, 512 * 1024**2)
    lowered = GatewaySettings(max_upload_bytes=1000, max_fine_tune_upload_bytes=5000)
    assert (lowered.upload_limit("batch"), lowered.upload_limit("fine-tune")) == (1000, 1000)
