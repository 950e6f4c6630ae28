"""The real Kueue controller manager against a test control plane, installed as its release
manifests install it: CRDs from the module's own bases with their conversion webhooks, the
webhook configurations from its config/components/webhook (with the namespace selectors
its kustomization patches in), `kueue-` name prefix, namespace `kueue-system`, and its
internal certificate management issuing the serving certificate and injecting the CA.

Two things differ from a cluster, which has a Service network and runs Kueue in a Pod:
- the webhook Service is an ExternalName Service pointing at 127.0.0.1. The API server
  resolves service webhooks through it to `https://127.0.0.1:<webhook port>` and verifies
  the certificate against the Service's DNS name, `kueue-webhook-service.kueue-system.svc`,
  which is the name Kueue's certificate is issued for;
- the harness plays the kubelet's part for the certificate Secret Kueue writes: it copies
  the Secret's keys into Kueue's certDir as a secret volume would, and Kueue waits for them
  there before serving, as in its Pod.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneforge.local.controlplane import ControlPlane, free_port

from tests.support.helm import REPO

VERSION = "v0.17.0"
NAMESPACE = "kueue-system"
PREFIX = "kueue-"
WEBHOOK_SERVICE = "kueue-webhook-service"
CERT_SECRET = "kueue-webhook-server-cert"
"""Created empty, as the release's internalcert component does; Kueue fills it."""
CONVERTED_CRDS = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
"""The CRDs the release's crd/kustomization.yaml gives a conversion webhook (v1beta1 <-> v1beta2)."""
API = "kueue.x-k8s.io/v1beta2"
FRAMEWORKS = ("batch/job",)
"""The integrations tuneforge's workloads need: trainers, batch runners and finalizers are
batch/v1 Jobs (multi-node trainers are Indexed Jobs, one Workload per group)."""


def provision() -> Path:
    """The directory with the `kueue` binary and manifests/ (hack/provision-kueue.sh)."""
    result = subprocess.run(["bash", str(REPO / "hack" / "provision-kueue.sh")], capture_output=True, text=True,
                            env={**os.environ, "KUEUE_VERSION": VERSION})
    if result.returncode != 0:
        raise RuntimeError(f"provisioning Kueue failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def _crds(manifests: Path, webhook_port: int) -> list[dict]:
    crds = [yaml.safe_load(path.read_text()) for path in sorted((manifests / "crds").glob("*.yaml"))]
    for crd in crds:
        if crd["spec"]["names"]["plural"] in CONVERTED_CRDS:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "clientConfig": {"service": {"namespace": NAMESPACE, "name": WEBHOOK_SERVICE, "path": "/convert",
                                             "port": webhook_port}},
                "conversionReviewVersions": ["v1"]}}
    return crds


_SYSTEM_NAMESPACES = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                            "values": ["kube-system", NAMESPACE]}]}
_SELECTED_WEBHOOKS = {"mpod.kb.io", "mdeployment.kb.io", "mstatefulset.kb.io",
                      "vpod.kb.io", "vdeployment.kb.io", "vstatefulset.kb.io"}
"""The webhooks the release's webhook/kustomization.yaml keeps out of kube-system and
kueue-system with a namespace selector."""


def _webhook_configurations(manifests: Path, webhook_port: int) -> list[dict]:
    configurations = list(yaml.safe_load_all((manifests / "webhook.yaml").read_text()))
    for configuration in configurations:
        configuration["metadata"]["name"] = PREFIX + configuration["metadata"]["name"]
        for webhook in configuration["webhooks"]:
            service = webhook["clientConfig"]["service"]
            service.update(namespace=NAMESPACE, name=WEBHOOK_SERVICE, port=webhook_port)
            if webhook["name"] in _SELECTED_WEBHOOKS:
                webhook["namespaceSelector"] = copy.deepcopy(_SYSTEM_NAMESPACES)
    return configurations


def _configuration(webhook_port: int, probe_port: int, cert_dir: Path) -> dict:
    """Kueue's Configuration for the harness. The on-demand visibility API is off: it is an
    aggregated API server that authenticates through the in-cluster Service account, which
    a process outside a Pod does not have, and nothing in tuneforge reads it."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{probe_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True, "webhookServiceName": WEBHOOK_SERVICE,
                                   "webhookSecretName": CERT_SECRET},
        "featureGates": {"VisibilityOnDemand": False},
        "integrations": {"frameworks": list(FRAMEWORKS)},
    }


@dataclass
class Kueue:
    """Kueue running against `plane`; `start` returns once its webhooks answer the API server."""

    plane: ControlPlane
    state_dir: Path
    process: subprocess.Popen | None = None
    webhook_port: int = 0
    probe_port: int = 0
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def log_path(self) -> Path:
        return self.state_dir / "kueue.log"

    def start(self, timeout: float = 120.0) -> "Kueue":
        home = provision()
        manifests = home / "manifests"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.webhook_port, self.probe_port = free_port(), free_port()
        self._apply([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE},
             "spec": {"type": "ExternalName", "externalName": "127.0.0.1"}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CERT_SECRET, "namespace": NAMESPACE}},
            *_crds(manifests, self.webhook_port),
        ])
        self.plane.wait_established(*[f"{plural}.kueue.x-k8s.io" for plural in CONVERTED_CRDS])
        self._apply(_webhook_configurations(manifests, self.webhook_port))
        config_file = self.state_dir / "config.yaml"
        config_file.write_text(yaml.safe_dump(_configuration(
            self.webhook_port, self.probe_port, self.cert_dir)))
        threading.Thread(target=self._mount_certificate, name="kueue-cert-volume", daemon=True).start()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(home / "kueue"), "--config", str(config_file), "--zap-log-level", "2"],
                env={**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(timeout)
        return self

    def stop(self) -> None:
        """Stops Kueue and removes its webhook configurations, which would otherwise refuse
        every Job and Pod of the control plane with Kueue gone."""
        self._stopping.set()
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            self.plane.kubectl("delete", kind, f"{PREFIX}{kind.removesuffix('webhookconfiguration')}"
                               "-webhook-configuration", "--ignore-not-found", check=False)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "Kueue":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def cert_dir(self) -> Path:
        return self.state_dir / "certs"

    def _mount_certificate(self) -> None:
        """Keeps certDir equal to the certificate Secret's data, as the kubelet keeps a secret
        volume: Kueue issues (and rotates) the certificate into the Secret, then serves what
        appears in certDir."""
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        written: dict[str, str] = {}
        while not self._stopping.wait(0.5):
            result = self.plane.kubectl("get", "secret", CERT_SECRET, "-n", NAMESPACE, "-o", "json", check=False)
            if result.returncode != 0:
                continue
            for key, value in (json.loads(result.stdout).get("data") or {}).items():
                if written.get(key) != value:
                    partial = self.cert_dir / f".{key}.tmp"
                    partial.write_bytes(base64.b64decode(value))
                    partial.replace(self.cert_dir / key)
                    written[key] = value

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def apply(self, *objects: dict[str, Any]) -> None:
        """Server-side applies Kueue objects (queues, flavors, priority classes) and waits
        until each LocalQueue is Active: Kueue admits, and its webhook defaults Jobs to a
        `default` LocalQueue, only from then on."""
        self._apply(list(objects))
        for obj in objects:
            if obj["kind"] == "LocalQueue":
                self.plane.kubectl("wait", "--for=condition=Active", "--timeout=60s", "-n",
                                   obj["metadata"]["namespace"], f"localqueue/{obj['metadata']['name']}")

    def _apply(self, objects: list[dict]) -> None:
        self.plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                           input=yaml.safe_dump_all(objects))

    def _wait_ready(self, timeout: float) -> None:
        """Ready once a dry-run create of a ResourceFlavor passes Kueue's webhook: the
        certificate is issued, the CA injected and the webhook server is serving."""
        probe = yaml.safe_dump({"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": "readiness-probe"}})
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Kueue exited with {self.process.returncode}:\n{self.tail()}")
            result = self.plane.kubectl("create", "--dry-run=server", "-f", "-", input=probe, check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kueue's webhooks did not answer in {timeout:.0f}s: {result.stderr.strip()}\n"
                                   f"{self.tail()}")
            time.sleep(1.0)
