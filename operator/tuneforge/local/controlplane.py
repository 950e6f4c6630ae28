"""A real Kubernetes control plane on one machine: etcd, kube-apiserver and, on request,
kube-controller-manager, as local processes.

Integration tests and `make dev` both run on it, so everything tuneforge does against
Kubernetes is exercised against the real API server (validation, CEL rules, RBAC, the Job
and Deployment controllers), not a fake. The binaries come from hack/provision-k8s.sh.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tuneforge.local.pki import CertificateAuthority, KeyPair

REPO_ROOT = Path(__file__).resolve().parents[3]
PROVISION_SCRIPT = REPO_ROOT / "hack" / "provision-k8s.sh"
CRD_DIR = REPO_ROOT / "crds"
SERVICE_CIDR = "10.96.0.0/16"
KUBELET_ADDRESS_TYPES = "InternalIP,Hostname"
"""Which Node address the API server dials a kubelet at. Its default puts `Hostname` first,
and the machine's hostname may resolve to an address the node agent does not listen on
(127.0.1.1, a LAN address); the agent reports 127.0.0.1 as its InternalIP, as kind's
nodes report theirs, and its serving certificate names both."""


class ControlPlaneError(RuntimeError):
    """A component did not start; the message carries the tail of its log."""


def provision_binaries() -> Path:
    """The directory holding etcd, kube-apiserver, kube-controller-manager and kubectl."""
    result = subprocess.run(
        ["bash", str(PROVISION_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) with state under `state_dir`.

    State survives a restart with the same directory: the admin token, the service
    account key and etcd's data are reused, so `make dev` keeps its objects. `start`
    picks fresh ports; `kill` and `resume` take components down and bring them back on
    the ports they had, so every client's kubeconfig stays valid through the outage.
    """

    state_dir: Path
    with_controller_manager: bool = False
    audit_writes: bool = False
    """Record every mutating request (create/update/patch/delete) at Metadata level in
    `audit_log`: who wrote what, with which user agent. Benchmarks count API writes from
    it, since it is what the API server itself saw."""
    bin_dir: Path | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    api_port: int = 0
    etcd_port: int = 0
    etcd_peer_port: int = 0
    controller_manager_port: int = 0

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "logs" / "audit.log"

    @property
    def token(self) -> str:
        return (self.state_dir / "admin-token").read_text().strip()

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def cluster_ca(self) -> CertificateAuthority:
        """The CA the API server and the kubelets trust each other through: it signs the
        API server's kubelet client certificate and the node agent's serving certificate."""
        return CertificateAuthority.ensure(self.pki_dir, "tuneforge-local-ca")

    @property
    def kubelet_client(self) -> KeyPair:
        """The certificate the API server presents to kubelets (kubeadm's
        apiserver-kubelet-client)."""
        return KeyPair(self.pki_dir / "apiserver-kubelet-client.crt", self.pki_dir / "apiserver-kubelet-client.key")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "ControlPlane":
        self.bin_dir = self.bin_dir or provision_binaries()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        self._ensure_credentials()
        self.etcd_port, self.etcd_peer_port, self.api_port, self.controller_manager_port = (
            free_port(), free_port(), free_port(), free_port())
        try:
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            if self.with_controller_manager:
                self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, *names: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Takes components down with `sig` (SIGKILL: as a crashed machine would) and
        waits until they are gone; `resume` brings them back."""
        for name in names:
            process = self.processes.pop(name)
            process.send_signal(sig)
            process.wait()

    def resume(self) -> None:
        """Starts every component that is down again, on its ports and with its data,
        etcd first; returns once each is ready."""
        starts = {"etcd": self._start_etcd, "kube-apiserver": self._start_apiserver}
        if self.with_controller_manager:
            starts["kube-controller-manager"] = self._start_controller_manager
        for name, start in starts.items():
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                start()

    def stop(self) -> None:
        """Stops every component, controller-manager first, etcd last."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- components --------------------------------------------------------------------

    def _ensure_credentials(self) -> None:
        token_file = self.state_dir / "admin-token"
        if not token_file.exists():
            token_file.write_text(secrets.token_hex(24) + "\n")
        token = self.token
        (self.state_dir / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
        key_file = self.state_dir / "sa.key"
        if not key_file.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            key_file.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
            )
            (self.state_dir / "sa.pub").write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        # Issued afresh at every start, so it always belongs to the CA on disk.
        self.cluster_ca.issue(self.kubelet_client, "kube-apiserver-kubelet-client", usage="client")

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.state_dir / "logs" / f"{name}.log", "ab")
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.processes[name] = process
        return process

    def _wait(self, name: str, ready, timeout: float = 90.0) -> None:
        process = self.processes[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {process.returncode}:\n{_tail(self.state_dir / 'logs' / f'{name}.log')}"
                )
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} not ready after {timeout}s:\n{_tail(self.state_dir / 'logs' / f'{name}.log')}")

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def _start_etcd(self) -> None:
        client_url, peer_url = self.etcd_url, f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--data-dir", str(self.state_dir / "etcd"),
                "--listen-client-urls", client_url,
                "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url,
                "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"default={peer_url}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes", str(4 * 1024**3),
                "--log-level", "warn",
            ],
        )
        self._wait("etcd", lambda: _http_ok(f"{client_url}/health"))

    def _start_apiserver(self) -> None:
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                "--etcd-servers", self.etcd_url,
                "--cert-dir", str(self.pki_dir),
                "--secure-port", str(self.api_port),
                "--bind-address", "127.0.0.1",
                "--advertise-address", "127.0.0.1",
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file", str(self.state_dir / "sa.pub"),
                "--service-account-signing-key-file", str(self.state_dir / "sa.key"),
                "--token-auth-file", str(self.state_dir / "tokens.csv"),
                "--kubelet-certificate-authority", str(self.cluster_ca.cert_file),
                "--kubelet-client-certificate", str(self.kubelet_client.cert_file),
                "--kubelet-client-key", str(self.kubelet_client.key_file),
                "--kubelet-preferred-address-types", KUBELET_ADDRESS_TYPES,
                "--authorization-mode", "RBAC",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--event-ttl", "1h",
                *self._audit_args(),
                "--v", "0",
            ],
        )
        self._wait("kube-apiserver", lambda: _http_ok(f"{self.server}/readyz", self.token), timeout=120)

    def _audit_args(self) -> list[str]:
        if not self.audit_writes:
            return []
        policy = self.state_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [
                {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
                {"level": "None"},
            ],
        }))
        return ["--audit-policy-file", str(policy), "--audit-log-path", str(self.audit_log),
                "--audit-log-format", "json", "--audit-log-mode", "blocking"]

    def _write_kubeconfig(self) -> None:
        ca = self.pki_dir / "apiserver.crt"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "tuneforge", "cluster": {"server": self.server, "certificate-authority": str(ca)}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "tuneforge", "context": {"cluster": "tuneforge", "user": "admin"}}],
            "current-context": "tuneforge",
        }
        tmp = self.kubeconfig.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        os.replace(tmp, self.kubeconfig)

    def _start_controller_manager(self) -> None:
        port = self.controller_manager_port
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                "--kubeconfig", str(self.kubeconfig),
                "--authentication-kubeconfig", str(self.kubeconfig),
                "--authorization-kubeconfig", str(self.kubeconfig),
                "--leader-elect=false",
                "--secure-port", str(port),
                "--bind-address", "127.0.0.1",
                "--service-account-private-key-file", str(self.state_dir / "sa.key"),
                "--root-ca-file", str(self.pki_dir / "apiserver.crt"),
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--controllers", "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route,-persistentvolume-binder,-attachdetach",
                "--concurrent-job-syncs", "20",
                "--v", "0",
            ],
        )
        self._wait("kube-controller-manager", lambda: _http_ok(f"https://127.0.0.1:{port}/healthz"), timeout=60)

    # -- conveniences ------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Runs the provisioned kubectl against this control plane."""
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply_crds(self) -> None:
        self.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
        self.wait_established()

    def wait_established(self, *crds: str, timeout: float = 60.0) -> None:
        """Waits until the named CRDs (every CRD, given none) are Established. Not `kubectl
        wait` alone: on a CRD the API server has not yet given its first conditions it
        fails at once (".status.conditions accessor error: <nil>") instead of waiting."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(1, int(deadline - time.monotonic()))
            result = self.kubectl("wait", "--for=condition=Established", f"--timeout={left}s", "crd",
                                  *(crds or ["--all"]), check=False)
            if result.returncode == 0:
                return
            if "accessor error" not in result.stderr or time.monotonic() > deadline:
                raise ControlPlaneError(f"CRDs not Established: {result.stderr.strip()}")
            time.sleep(0.2)


def _http_ok(url: str, token: str | None = None) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return response.status == 200
    except OSError:
        return False

