"""tuneforge's Argo CD health checks evaluated by Argo CD itself (hack/argocd-health, built
from the argo-cd module): the generated argocd-cm is applied to a real API server, Argo CD's
SettingsManager reads its resource customizations from there as the application controller
does, and gitops-engine's GetResourceHealth, with Argo CD's Lua VM, judges objects in every
phase of every kind as the API server stores them (status written through the status
subresource, generation kept by the API server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.local.controlplane import ControlPlane

from tests.support.argocd import ARGOCD_CM, CASES, EXPECTED, ArgoCdHealth, provision_argocd_health
from tests.support.helm import REPO

pytestmark = pytest.mark.integration
PLURALS = {"BaseModel": "basemodels", "FineTuningJob": "finetuningjobs", "ModelDeployment": "modeldeployments",
           "BatchJob": "batchjobs"}
EXAMPLES = {"BaseModel": "basemodel-smollm2.yaml", "FineTuningJob": "finetuningjob.yaml",
            "ModelDeployment": "modeldeployment.yaml", "BatchJob": "batchjob.yaml"}


@pytest.fixture(scope="module")
def argocd(control_plane: ControlPlane) -> Iterator[ArgoCdHealth]:
    """argocd-cm with tuneforge's health checks, applied as docs/install.md says."""
    control_plane.kubectl("create", "namespace", "argocd", check=False)
    control_plane.kubectl("apply", "-f", str(ARGOCD_CM))
    yield ArgoCdHealth(provision_argocd_health(), control_plane.kubeconfig)
    control_plane.kubectl("delete", "namespace", "argocd", "--wait=false")


class Objects:
    """Creates objects of each kind from examples/ and gives them a status as the operator
    would (the status subresource); returns them as the API server stores them."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.created: list[tuple[str, str]] = []

    def make(self, kind: str, status: dict[str, Any] | None, *, stale: bool = False) -> dict[str, Any]:
        body = yaml.safe_load((REPO / "examples" / EXAMPLES[kind]).read_text())
        body["metadata"] = {"name": f"{kind.lower()}-{uuid.uuid4().hex[:10]}"}
        plural = PLURALS[kind]
        obj = self._call("create", plural, body=body)
        self.created.append((plural, obj["metadata"]["name"]))
        if status is not None:
            observed = obj["metadata"]["generation"] - (1 if stale else 0)
            obj = self._call("patch", plural, obj["metadata"]["name"], status=True,
                             body={"status": {**status, "observedGeneration": observed}})
        return obj

    def delete_all(self) -> None:
        for plural, name in self.created:
            self._call("delete", plural, name)

    def _call(self, verb: str, plural: str, name: str | None = None, *, status: bool = False, body: Any = None) -> Any:
        cluster = plural == "basemodels"
        method = f"{verb}_{'cluster' if cluster else 'namespaced'}_custom_object{'_status' if status else ''}"
        args: list[Any] = [GROUP, VERSION] + ([] if cluster else [self.namespace]) + [plural]
        args += [name] if name else []
        args += [body] if body is not None else []
        return getattr(self.custom, method)(*args)


@pytest.fixture
def objects(api_client: client.ApiClient, namespace: str) -> Iterator[Objects]:
    made = Objects(api_client, namespace)
    yield made
    made.delete_all()


def test_argo_cd_reads_a_health_check_for_every_kind_from_argocd_cm(argocd: ArgoCdHealth) -> None:
    assert argocd.health_checked_kinds() == sorted(f"{GROUP}/{kind}" for kind in EXPECTED)


def test_every_phase_of_every_kind_gets_its_health(argocd: ArgoCdHealth, objects: Objects) -> None:
    stored = [objects.make(kind, {"phase": phase}) for kind, phase, _ in CASES]
    results = argocd.evaluate(stored)
    got = {(kind, phase): result for (kind, phase, _), result in zip(CASES, results, strict=True)}
    assert {case: result.get("status") for case, result in got.items()} == {
        (kind, phase): expected for kind, phase, expected in CASES}
    assert all(result["message"].startswith(phase) for (_, phase), result in got.items())


def test_a_status_older_than_the_spec_or_missing_is_progressing(argocd: ArgoCdHealth, objects: Objects) -> None:
    stale = [objects.make(kind, {"phase": phase}, stale=True) for kind, phase, _ in CASES]
    fresh = [objects.make(kind, None) for kind in EXPECTED]
    results = argocd.evaluate(stale + fresh)
    assert [r["status"] for r in results] == ["Progressing"] * len(results)
    assert all("has not observed generation" in r["message"] for r in results[:len(stale)])
    assert [r["message"] for r in results[len(stale):]] == [
        f"Waiting for the tuneforge operator to observe this {kind}" for kind in EXPECTED]


def test_messages_carry_the_reason(argocd: ArgoCdHealth, objects: Objects) -> None:
    stored = [
        objects.make("FineTuningJob", {"phase": "Failed", "error": {
            "code": "invalid_n_examples", "message": "Training file has 3 example(s), but must have at least 10"}}),
        objects.make("FineTuningJob", {"phase": "Running", "progress": {"step": 5, "totalSteps": 20}}),
        objects.make("BatchJob", {"phase": "InProgress", "requestCounts": {"total": 10, "completed": 4, "failed": 1}}),
        objects.make("ModelDeployment", {"phase": "Degraded", "conditions": [{
            "type": "Available", "status": "False", "reason": "PodsNotReady", "message": "1 of 2 replicas ready",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
    ]
    assert argocd.evaluate(stored) == [
        {"status": "Degraded",
         "message": "Failed (invalid_n_examples): Training file has 3 example(s), but must have at least 10"},
        {"status": "Progressing", "message": "Running: step 5 of 20"},
        {"status": "Progressing", "message": "InProgress: 4 completed, 1 failed of 10"},
        {"status": "Degraded", "message": "Degraded: 1 of 2 replicas ready"},
    ]


def test_without_the_customizations_argo_cd_has_no_health_for_tuneforge_kinds(
        control_plane: ControlPlane, objects: Objects) -> None:
    """What the checks are for: Argo CD has no built-in health for these kinds, so without
    argocd-cm's keys a failed job would count as healthy in an Application."""
    control_plane.kubectl("create", "namespace", "argocd-bare", check=False)
    empty = yaml.safe_load(ARGOCD_CM.read_text())
    empty["metadata"]["namespace"], empty["data"] = "argocd-bare", {}
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(empty))
    try:
        bare = ArgoCdHealth(provision_argocd_health(), control_plane.kubeconfig, namespace="argocd-bare")
        assert bare.health_checked_kinds() == []
        assert bare.evaluate([objects.make("FineTuningJob", {"phase": "Failed"})]) == [{"status": ""}]
    finally:
        control_plane.kubectl("delete", "namespace", "argocd-bare", "--wait=false")
