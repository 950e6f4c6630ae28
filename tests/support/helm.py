"""The pinned helm binary for the chart tests, and the chart rendered as Python objects.

helm always comes from hack/provision-helm.sh (the cache, or a build from the upstream Go
module), never from PATH, so every machine tests the chart with the same helm.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tuneforge"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
PROVISION_SCRIPT = REPO / "hack" / "provision-helm.sh"
RELEASE = "tuneforge"
NAMESPACE = "tuneforge-system"


def provision_helm() -> Path:
    result = subprocess.run(["bash", str(PROVISION_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


class HelmError(AssertionError):
    """helm exited non-zero; the message carries its output."""


@dataclass
class Helm:
    binary: Path

    def run(self, *args: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.binary), *args]
        if kubeconfig is not None:
            argv += ["--kubeconfig", str(kubeconfig)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def template_text(self, *values_files: Path, sets: tuple[str, ...] = (), extra: tuple[str, ...] = (),
                      check: bool = True) -> subprocess.CompletedProcess:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
        for path in values_files:
            args += ["-f", str(path)]
        for assignment in sets:
            args += ["--set-json", assignment]
        return self.run(*args, check=check)

    def template(self, *values_files: Path, sets: tuple[str, ...] = ()) -> "Rendered":
        text = self.template_text(*values_files, sets=sets).stdout
        return Rendered([doc for doc in yaml.safe_load_all(text) if doc])


@dataclass
class Rendered:
    """The documents of one `helm template`."""

    documents: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        matches = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def pod_templates(self) -> list[tuple[str, dict[str, Any]]]:
        return [(doc["metadata"]["name"], doc["spec"]["template"]["spec"])
                for doc in self.documents if doc["kind"] in ("Deployment", "StatefulSet")]

    def rbac_rules(self) -> list[tuple[str, dict[str, Any]]]:
        return [(f"{doc['kind']}/{doc['metadata']['name']}", rule)
                for doc in self.documents if doc["kind"] in ("Role", "ClusterRole")
                for rule in doc.get("rules", [])]
