"""The Argo CD health checks, executed on Lua 5.1 (the dialect of Argo CD's gopher-lua)
against sample objects in every phase of each kind: the fast check, while
tests/integration/argocd runs them through Argo CD's own evaluation. The scripts run are
the ones users install: the values of the generated deploy/argocd/argocd-cm-health.yaml
(common.lua and each kind's part of deploy/argocd/health, joined by `make crds`)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from lupa.lua51 import LuaRuntime

from tests.support.argocd import ARGO_STATUSES, ARGOCD_CM, CASES, EXPECTED

SCRIPTS = yaml.safe_load(ARGOCD_CM.read_text())["data"]


def health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """Runs the kind's script as Argo CD does: `obj` is a global, the script returns a table."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPTS[f"resource.customizations.health.tuneforge.io_{kind}"])
    return {"status": result["status"], "message": result["message"]}


def sample(kind: str, phase: str | None, *, generation: int = 3, observed: int | None = 3, **status: Any) -> dict:
    obj: dict[str, Any] = {
        "apiVersion": "tuneforge.io/v1alpha1", "kind": kind,
        "metadata": {"name": "sample", "generation": generation},
        "spec": {"replicas": 1} if kind == "ModelDeployment" else {},
    }
    if phase is not None:
        obj["status"] = {"phase": phase, **status}
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


def test_every_phase_of_every_kind_is_covered():
    for kind, (enum, table) in EXPECTED.items():
        assert set(table) == {phase.value for phase in enum}, kind
        assert f"resource.customizations.health.tuneforge.io_{kind}" in SCRIPTS


@pytest.mark.parametrize(("kind", "phase", "expected"), CASES, ids=[f"{k}-{p}" for k, p, _ in CASES])
def test_current_status_maps_each_phase(kind: str, phase: str, expected: str):
    result = health(kind, sample(kind, phase))
    assert result["status"] == expected
    assert result["message"].startswith(phase)


@pytest.mark.parametrize(("kind", "phase", "expected"), CASES, ids=[f"{k}-{p}" for k, p, _ in CASES])
def test_stale_status_is_progressing_never_healthy(kind: str, phase: str, expected: str):
    stale = health(kind, sample(kind, phase, generation=4, observed=3))
    assert stale["status"] == "Progressing"
    assert "generation 4" in stale["message"]
    unobserved = health(kind, sample(kind, phase, generation=4, observed=None))
    assert unobserved["status"] == "Progressing"


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_no_status_yet_is_progressing(kind: str):
    result = health(kind, sample(kind, None))
    assert result == {"status": "Progressing", "message": f"Waiting for the tuneforge operator to observe this {kind}"}
    assert health(kind, {**sample(kind, None), "status": {}})["status"] == "Progressing"


def test_messages_carry_the_reason():
    failed = health("FineTuningJob", sample("FineTuningJob", "Failed", error={
        "code": "invalid_n_examples", "message": "Training file has 3 example(s), but must have at least 10"}))
    assert failed == {"status": "Degraded",
                      "message": "Failed (invalid_n_examples): Training file has 3 example(s), but must have at least 10"}
    done = health("FineTuningJob", sample("FineTuningJob", "Succeeded", fineTunedModel="ft:m:team:bot:ftjob-1"))
    assert done["message"] == "Succeeded: ft:m:team:bot:ftjob-1"
    running = health("FineTuningJob", sample("FineTuningJob", "Running", progress={"step": 5, "totalSteps": 20}))
    assert running == {"status": "Progressing", "message": "Running: step 5 of 20"}
    batch = health("BatchJob", sample("BatchJob", "InProgress", requestCounts={"total": 10, "completed": 4, "failed": 1}))
    assert batch["message"] == "InProgress: 4 completed, 1 failed of 10"
    expired = health("BatchJob", sample("BatchJob", "Expired", errors=[{"code": "batch_expired", "message": "window ran out"}]))
    assert expired == {"status": "Degraded", "message": "Expired (batch_expired): window ran out"}
    model = health("BaseModel", sample("BaseModel", "Failed", conditions=[
        {"type": "Ready", "status": "False", "reason": "InvalidSource", "message": "no such file"}]))
    assert model == {"status": "Degraded", "message": "Failed: no such file"}
    degraded = health("ModelDeployment", sample("ModelDeployment", "Degraded", conditions=[
        {"type": "Available", "status": "False", "reason": "PodsNotReady", "message": "1 of 2 replicas ready"}]))
    assert degraded == {"status": "Degraded", "message": "Degraded: 1 of 2 replicas ready"}


def test_a_deployment_scaled_to_zero_is_suspended():
    obj = sample("ModelDeployment", "Pending")
    obj["spec"]["replicas"] = 0
    assert health("ModelDeployment", obj) == {"status": "Suspended", "message": "Pending: scaled to zero replicas"}


def test_results_are_argo_statuses():
    for kind, phase, _ in CASES:
        assert health(kind, sample(kind, phase))["status"] in ARGO_STATUSES
