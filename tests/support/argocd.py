"""Argo CD's view of tuneforge resources: the health each phase of each kind must get, and
Argo CD's own evaluation of the health checks (hack/argocd-health, built from the argo-cd
module at the version docs/install.md states as tested)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tuneforge.api.v1alpha1.basemodel import BaseModelPhase
from tuneforge.api.v1alpha1.batchjob import BatchJobPhase
from tuneforge.api.v1alpha1.finetuningjob import FineTuningJobPhase
from tuneforge.api.v1alpha1.modeldeployment import ModelDeploymentPhase

from tests.support.helm import REPO

ARGOCD_VERSION = "v3.6.2"
ARGOCD_CM = REPO / "deploy" / "argocd" / "argocd-cm-health.yaml"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
EXPECTED = {
    "BaseModel": (BaseModelPhase, {"Pending": "Progressing", "Ready": "Healthy", "Failed": "Degraded"}),
    "FineTuningJob": (FineTuningJobPhase, {
        "ValidatingFiles": "Progressing", "Queued": "Progressing", "Running": "Progressing",
        "Paused": "Suspended", "Succeeded": "Healthy", "Failed": "Degraded", "Cancelled": "Suspended",
    }),
    "ModelDeployment": (ModelDeploymentPhase, {
        "Pending": "Progressing", "Deploying": "Progressing", "Ready": "Healthy",
        "Degraded": "Degraded", "Failed": "Degraded",
    }),
    "BatchJob": (BatchJobPhase, {
        "Validating": "Progressing", "InProgress": "Progressing", "Finalizing": "Progressing",
        "Completed": "Healthy", "Failed": "Degraded", "Expired": "Degraded",
        "Cancelling": "Progressing", "Cancelled": "Suspended",
    }),
}
"""Argo CD health status of every phase of every kind: running work Progressing, done
Healthy, failed Degraded, stopped on purpose Suspended."""
CASES = [(kind, phase, status) for kind, (_, table) in EXPECTED.items() for phase, status in table.items()]


def provision_argocd_health() -> Path:
    """The argocd-health binary (hack/provision-argocd-health.sh)."""
    result = subprocess.run(["bash", str(REPO / "hack" / "provision-argocd-health.sh")], capture_output=True,
                            text=True, env={**os.environ, "ARGOCD_VERSION": ARGOCD_VERSION})
    if result.returncode != 0:
        raise RuntimeError(f"provisioning argocd-health failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


class ArgoCdHealth:
    """Argo CD's health evaluation with the resource customizations of the argocd-cm that
    the API server behind `kubeconfig` holds in `namespace`."""

    def __init__(self, binary: Path, kubeconfig: Path, namespace: str = "argocd") -> None:
        self.argv = [str(binary), "--kubeconfig", str(kubeconfig), "--namespace", namespace]

    def health_checked_kinds(self) -> list[str]:
        """The group/kinds Argo CD read a health script for from argocd-cm."""
        return json.loads(self._run(["--list-overrides"], "")[0])

    def evaluate(self, objects: list[dict[str, Any]]) -> list[dict[str, str]]:
        """Argo CD's health of each object, in order: {"status", "message"} or {"error"}."""
        lines = self._run([], "".join(json.dumps(obj) + "\n" for obj in objects))
        return [json.loads(line) for line in lines]

    def _run(self, args: list[str], stdin: str) -> list[str]:
        result = subprocess.run([*self.argv, *args], input=stdin, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"argocd-health failed ({result.returncode}): {result.stderr[-3000:]}")
        return result.stdout.splitlines()
