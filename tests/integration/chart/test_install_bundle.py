"""`make manifests` renders dist/install.yaml; `kubectl apply -f dist/install.yaml` works on a
clean control plane (once, and again unchanged), and the examples apply on top of it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import yaml

from tuneforge.local.controlplane import ControlPlane

from tests.support.helm import NAMESPACE, REPO

pytestmark = pytest.mark.integration
BUNDLE = REPO / "dist" / "install.yaml"


@pytest.fixture(scope="module")
def bundle(helm) -> list[dict]:
    result = subprocess.run(["make", "-s", "manifests"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return [doc for doc in yaml.safe_load_all(BUNDLE.read_text()) if doc]


@pytest.fixture(scope="module")
def clean_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(state_dir=tmp_path_factory.mktemp("bundle-plane")) as plane:
        yield plane


def test_bundle_is_self_contained(bundle: list[dict]):
    kinds = [doc["kind"] for doc in bundle]
    assert kinds.count("CustomResourceDefinition") == 5
    assert kinds.index("Namespace") < min(i for i, doc in enumerate(bundle) if doc["metadata"].get("namespace"))
    assert all(doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE for doc in bundle)
    # Custom resources next to their CRDs would fail a first `kubectl apply` (no REST mapping yet).
    assert not [doc for doc in bundle if doc["apiVersion"].startswith(("tuneforge.io/", "kopf.dev/"))]


def test_kubectl_apply_on_a_clean_control_plane(bundle: list[dict], clean_plane: ControlPlane):
    first = clean_plane.kubectl("apply", "-f", str(BUNDLE))
    assert f"namespace/{NAMESPACE} created" in first.stdout
    assert first.stdout.count(" created") == len(bundle)
    # Applying again converges: nothing new is created (and kubectl exits 0).
    again = clean_plane.kubectl("apply", "-f", str(BUNDLE))
    assert " created" not in again.stdout and again.stdout.count("\n") == len(bundle)
    clean_plane.wait_established()
    statefulset = clean_plane.kubectl("get", "statefulset", "tuneforge-operator", "-n", NAMESPACE, "-o", "yaml").stdout
    assert yaml.safe_load(statefulset)["spec"]["replicas"] == 2


def test_examples_apply_on_the_installed_bundle(bundle: list[dict], clean_plane: ControlPlane):
    clean_plane.kubectl("apply", "-f", str(BUNDLE))
    clean_plane.wait_established()
    clean_plane.kubectl("create", "namespace", "team-a")
    result = clean_plane.kubectl("apply", "-n", "team-a", "-f", str(REPO / "examples"))
    lines = result.stdout.splitlines()
    assert all(line.endswith(" created") for line in lines), result.stdout
    assert {line.split()[0] for line in lines} >= {
        "basemodel.tuneforge.io/smollm2-135m-instruct", "batchjob.tuneforge.io/batch-0123456789abcdef",
        "finetuningjob.tuneforge.io/ftjob-0123456789abcdef", "modeldeployment.tuneforge.io/support-bot"}
