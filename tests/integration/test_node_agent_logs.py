"""`kubectl logs` against Pods the local node agent runs, through the real path: kubectl
asks the real kube-apiserver, which dials the agent's kubelet endpoint at the address and
port its Node reports, verifies its serving certificate against the cluster CA and
presents its kubelet client certificate. Plain, `--tail`, `--limit-bytes`, `-c` for a
second container, `-f` receiving lines written after the request and ending with the
container, `--previous` after a restart, and the errors for what cannot be shown. The
endpoint itself refuses any client but the API server.

As in test_node_agent_indexed_job.py, the agent's `tuneforge-train` is Python itself, so
the Pods' programs are the `-c` arguments below, and the control plane is this module's.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tuneforge.config import Settings
from tuneforge.local.containerlogs import run_log
from tuneforge.local.controlplane import ControlPlane
from tuneforge.local.node import NodeAgent
from tuneforge.local.pki import CertificateAuthority, KeyPair
from tuneforge.local.podworker import pod_dir_name

from tests.support.apiserver import wait_for
from tests.support.node_agents import python_node_agent

pytestmark = pytest.mark.integration
NAMESPACE = "logs"

TALKER = """
import os, pathlib, time
for i in range(1, 6):
    print(f"line {i}")
gate = pathlib.Path(os.environ["GATE"])
while not gate.exists():
    time.sleep(0.1)
print("after the gate")
"""
SIDECAR = """
import os, pathlib, time
print("sidecar ready")
gate = pathlib.Path(os.environ["GATE"])
while not gate.exists():
    time.sleep(0.1)
"""
RESTARTER = """
import os, pathlib, sys, time
runs = pathlib.Path(os.environ["RUNS"])
run = len(runs.read_text()) if runs.exists() else 0
runs.write_text("x" * (run + 1))
print(f"run {run}")
if run == 0:
    sys.exit(3)
gate = pathlib.Path(os.environ["GATE"])
while not gate.exists():
    time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(state_dir=tmp_path_factory.mktemp("logs-plane"), with_controller_manager=True) as plane:
        plane.kubectl("create", "namespace", NAMESPACE)
        yield plane


@pytest.fixture(scope="module")
def agent(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    with python_node_agent(plane, tmp_path_factory.mktemp("node"), tmp_path_factory.mktemp("scripts")) as agent:
        yield agent


def _container(name: str, program: str, **env: str) -> dict:
    return {"name": name, "image": Settings().trainer_image, "command": ["tuneforge-train"],
            "args": ["-c", program], "env": [{"name": key, "value": value} for key, value in env.items()]}


def _run_pod(plane: ControlPlane, name: str, containers: list[dict], restart_policy: str = "Never") -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"restartPolicy": restart_policy, "automountServiceAccountToken": False,
                    "containers": containers}}
    plane.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(pod))


def _pod(plane: ControlPlane, name: str) -> dict:
    return json.loads(plane.kubectl("get", "pod", name, "-n", NAMESPACE, "-o", "json").stdout)


def _statuses(plane: ControlPlane, name: str) -> dict[str, dict]:
    return {s["name"]: s for s in _pod(plane, name).get("status", {}).get("containerStatuses") or []}


def _logs(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess:
    return plane.kubectl("logs", "-n", NAMESPACE, *args, check=False)


def _written(plane: ControlPlane, pod: str, container: str, text: str) -> str | None:
    """The container's log once it holds `text`: waits for the process to have written it."""
    result = _logs(plane, pod, "-c", container)
    return result.stdout if result.returncode == 0 and text in result.stdout else None


@pytest.fixture(scope="module")
def talker(plane: ControlPlane, agent: NodeAgent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Pod of two containers that have written their first lines and wait for a gate file."""
    gate = tmp_path_factory.mktemp("talker") / "gate"
    _run_pod(plane, "talker", [_container("main", TALKER, GATE=str(gate)),
                               _container("sidecar", SIDECAR, GATE=str(gate))])
    wait_for(lambda: _written(plane, "talker", "main", "line 5"), message="talker's main to write 5 lines")
    wait_for(lambda: _written(plane, "talker", "sidecar", "ready"), message="talker's sidecar to write its line")
    yield "talker"
    gate.touch()


FIVE_LINES = "".join(f"line {i}\n" for i in range(1, 6))


def test_logs_tail_limit_and_container(plane: ControlPlane, talker: str):
    plain = _logs(plane, talker)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == FIVE_LINES
    assert 'Defaulted container "main" out of: main, sidecar' in plain.stderr

    assert _logs(plane, talker, "-c", "main", "--tail=2").stdout == "line 4\nline 5\n"
    assert _logs(plane, talker, "-c", "main", "--tail=0").stdout == ""
    assert _logs(plane, talker, "-c", "main", "--limit-bytes=10").stdout == "line 1\nlin"
    assert _logs(plane, talker, "-c", "sidecar").stdout == "sidecar ready\n"


def test_logs_errors_name_what_is_missing(plane: ControlPlane, talker: str):
    unknown = _logs(plane, talker, "-c", "nope")
    assert unknown.returncode != 0
    assert "container nope is not valid for pod talker" in unknown.stderr

    previous = _logs(plane, talker, "-c", "main", "--previous")
    assert previous.returncode != 0
    assert 'previous terminated container "main" in pod "talker" not found' in previous.stderr

    for option in ("--timestamps", "--since=1h"):
        refused = _logs(plane, talker, "-c", "main", option)
        assert refused.returncode != 0
        assert "BadRequest" in refused.stderr and "without a time per line" in refused.stderr, refused.stderr


def _follow(plane: ControlPlane, pod: str) -> tuple[subprocess.Popen, queue.Queue[str]]:
    """`kubectl logs -f`, with its output lines arriving in a queue."""
    follow = subprocess.Popen([str(plane.bin_dir / "kubectl"), "--kubeconfig", str(plane.kubeconfig), "logs",
                               "-n", NAMESPACE, "-f", pod], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout], daemon=True).start()
    return follow, lines


def _readers(path: Path) -> int:
    """How many open files of this process (the agent's) are `path`."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += fd.resolve() == path
        except OSError:  # closed meanwhile
            pass
    return count


def test_follow_receives_later_lines_and_ends_with_the_container(plane: ControlPlane, agent: NodeAgent,
                                                               tmp_path: Path):
    gate = tmp_path / "gate"
    _run_pod(plane, "follower", [_container("main", TALKER, GATE=str(gate))])
    wait_for(lambda: _written(plane, "follower", "main", "line 5"), message="follower to write 5 lines")
    log = run_log(agent.context.pods_dir / pod_dir_name(_pod(plane, "follower")), "main", 0).resolve()
    first, first_lines = _follow(plane, "follower")
    second, second_lines = _follow(plane, "follower")
    try:
        for lines in (first_lines, second_lines):
            assert [lines.get(timeout=60) for _ in range(5)] == [f"line {i}\n" for i in range(1, 6)]
        assert first.poll() is None and second.poll() is None  # still following a running container
        assert _readers(log) == 2

        second.kill()  # a client that goes away: the agent stops reading for it
        wait_for(lambda: _readers(log) == 1, message="the agent to let go of the second follower's stream")

        gate.touch()
        assert first_lines.get(timeout=60) == "after the gate\n"
        assert first.wait(timeout=60) == 0, first.stderr.read()
        assert _readers(log) == 0
    finally:
        for follow in (first, second):
            if follow.poll() is None:
                follow.kill()


def test_previous_shows_the_run_before_a_restart(plane: ControlPlane, agent: NodeAgent, tmp_path: Path):
    gate = tmp_path / "gate"
    _run_pod(plane, "restarter", [_container("main", RESTARTER, GATE=str(gate), RUNS=str(tmp_path / "runs"))],
             restart_policy="OnFailure")
    wait_for(lambda: (lambda s: s and s["restartCount"] == 1 and "running" in s["state"])(
        _statuses(plane, "restarter").get("main")), timeout=120, message="the restarter's second run")
    wait_for(lambda: _written(plane, "restarter", "main", "run 1"), message="the second run's line")
    assert _logs(plane, "restarter").stdout == "run 1\n"
    assert _logs(plane, "restarter", "--previous").stdout == "run 0\n"
    gate.touch()


def _context(plane: ControlPlane, client_cert: KeyPair | None) -> ssl.SSLContext:
    """TLS that trusts only the cluster CA for the server's certificate (which must name
    127.0.0.1), presenting `client_cert` if any."""
    context = ssl.create_default_context(cafile=str(plane.cluster_ca.cert_file))
    if client_cert is not None:
        context.load_cert_chain(str(client_cert.cert_file), str(client_cert.key_file))
    return context


def _kubelet(plane: ControlPlane, agent: NodeAgent, client_cert: KeyPair, path: str) -> httpx.Response:
    with httpx.Client(verify=_context(plane, client_cert), timeout=30) as http:
        return http.get(f"https://127.0.0.1:{agent.kubelet_port}{path}")


def _refused(plane: ControlPlane, agent: NodeAgent, client_cert: KeyPair | None, path: str) -> bool:
    """Whether the endpoint ends the connection without an HTTP answer to a request."""
    context = _context(plane, client_cert)
    try:
        with socket.create_connection(("127.0.0.1", agent.kubelet_port), timeout=30) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            return tls.recv(64) == b""
    except (ssl.SSLError, ConnectionResetError):
        return True


def test_kubelet_endpoint_answers_only_the_api_server(plane: ControlPlane, agent: NodeAgent, talker: str,
                                                      tmp_path: Path):
    node = json.loads(plane.kubectl("get", "node", "tuneforge-local", "-o", "json").stdout)
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == agent.kubelet_port
    path = f"/containerLogs/{NAMESPACE}/{talker}/main"

    served = _kubelet(plane, agent, plane.kubelet_client, f"{path}?tailLines=1")
    assert (served.status_code, served.text) == (200, "line 5\n")
    missing = _kubelet(plane, agent, plane.kubelet_client, f"/containerLogs/{NAMESPACE}/{talker}/nope")
    assert (missing.status_code, missing.text) == (404, 'container "nope" not found in pod "talker"')
    assert not _refused(plane, agent, plane.kubelet_client, path)

    node_serving = KeyPair(agent.state_dir / "pki" / "kubelet.crt", agent.state_dir / "pki" / "kubelet.key")
    other_ca = CertificateAuthority.ensure(tmp_path, "another-ca")
    impostor = other_ca.issue(KeyPair(tmp_path / "client.crt", tmp_path / "client.key"),
                              "kube-apiserver-kubelet-client", usage="client")
    # No certificate; the cluster CA's, but for serving (the node's own); a client's of another CA.
    for client_cert in (None, node_serving, impostor):
        assert _refused(plane, agent, client_cert, path), client_cert
