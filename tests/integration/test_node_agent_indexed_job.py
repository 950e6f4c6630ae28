"""An Indexed Job of two Pods with a subdomain and a headless Service, as multi-node
training runs it, on the real Job controller and the local node agent: each Pod has its
hostname and completion index, and Pod 1 finds Pod 0 by `<job>-0.<service>`, as torchrun's
c10d rendezvous does on a cluster.

The agent runs only tuneforge's own entrypoints, so here it gets a scripts directory of its
own (`NodeAgent(scripts_dir=...)`) whose `tuneforge-train` is Python itself: the Pods'
programs are the `-c` arguments below. The control plane is this module's own, because
the agent binds every Pending Pod of its API server, and the other integration tests keep
theirs Pending on purpose.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tuneforge.config import Settings
from tuneforge.local.controlplane import ControlPlane
from tuneforge.local.hosts import OwnNames
from tuneforge.local.node import NodeAgent
from tuneforge.local.podworker import pod_dir_name

from tests.support.node_agents import python_node_agent

pytestmark = pytest.mark.integration
NAMESPACE = "training"
JOB, SERVICE, PORT = "mn", "mn-workers", 29400

PROGRAM = """
import os, socket, time
index = int(os.environ["JOB_COMPLETION_INDEX"])
hostname = f"{os.environ['JOB_NAME']}-{index}"
assert os.environ["HOSTNAME"] == socket.gethostname() == hostname, (os.environ["HOSTNAME"], socket.gethostname())
first, port = os.environ["FIRST"], int(os.environ["PORT"])
if index == 0:
    address = socket.getaddrinfo(first, port, type=socket.SOCK_STREAM)[0][4][0]
    assert address == os.environ["POD_IP"], (address, os.environ["POD_IP"])
    with socket.create_server((address, port)) as server:
        server.settimeout(120)
        connection, _ = server.accept()
        with connection:
            connection.sendall(f"{hostname} at {address} greets {connection.recv(64).decode()}".encode())
else:
    deadline = time.monotonic() + 120
    while True:
        try:  # Pod 0 may have no address or no listener yet, as in a rendezvous
            address = socket.getaddrinfo(first, port, type=socket.SOCK_STREAM)[0][4]
            with socket.create_connection(address, timeout=5) as connection:
                connection.sendall(hostname.encode())
                print(connection.recv(128).decode(), flush=True)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(state_dir=tmp_path_factory.mktemp("indexed-plane"), with_controller_manager=True) as plane:
        yield plane


@pytest.fixture(scope="module")
def agent(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    with python_node_agent(plane, tmp_path_factory.mktemp("node"), tmp_path_factory.mktemp("scripts")) as agent:
        yield agent


def _get(plane: ControlPlane, *args: str) -> dict:
    return json.loads(plane.kubectl("get", "-n", NAMESPACE, *args, "-o", "json").stdout)


def _finished(plane: ControlPlane, timeout: float = 240.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conditions = (_get(plane, "job", JOB).get("status") or {}).get("conditions") or []
        done = [c["type"] for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"]
        if done:
            return done[0]
        time.sleep(1)
    raise AssertionError(f"Job {JOB} did not finish in {timeout:.0f}s")


def _logs(agent: NodeAgent, pods: list[dict]) -> dict[str, str]:
    """Each Pod's container log by its completion index."""
    return {pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]:
            (agent.context.pods_dir / pod_dir_name(pod) / "worker.log").read_text(errors="replace")
            for pod in pods}


def test_indexed_job_pods_find_each_other_by_hostname_and_subdomain(plane: ControlPlane, agent: NodeAgent):
    if not isinstance(agent.context.own_names, OwnNames):
        pytest.skip(f"this machine gives no process its own namespaces: {agent.context.own_names}")
    plane.kubectl("create", "namespace", NAMESPACE)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE}, "spec": {
        "clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"batch.kubernetes.io/job-name": JOB},
        "ports": [{"name": "rendezvous", "port": PORT}]}}
    worker = {"name": "worker", "image": Settings().trainer_image, "command": ["tuneforge-train"],
              "args": ["-c", PROGRAM], "env": [
                  {"name": "JOB_NAME", "valueFrom": {"fieldRef": {
                      "fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}},
                  {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                  {"name": "FIRST", "value": f"{JOB}-0.{SERVICE}"},
                  {"name": "PORT", "value": str(PORT)}]}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": JOB}, "spec": {
        "completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0,
        "template": {"spec": {"subdomain": SERVICE, "restartPolicy": "Never", "containers": [worker]}}}}
    for manifest in (service, job):
        plane.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(manifest))

    outcome = _finished(plane)
    pods = _get(plane, "pods", "-l", f"batch.kubernetes.io/job-name={JOB}")["items"]
    logs = _logs(agent, pods)
    assert outcome == "Complete", logs
    by_index = {pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]: pod for pod in pods}
    assert sorted(by_index) == ["0", "1"]
    assert {index: pod["spec"]["hostname"] for index, pod in by_index.items()} == {"0": f"{JOB}-0", "1": f"{JOB}-1"}
    assert all(pod["status"]["phase"] == "Succeeded" for pod in pods)
    assert logs["1"].strip() == f"{JOB}-0 at {by_index['0']['status']['podIP']} greets {JOB}-1"
