"""Shared status rules: conditions, diffs, throttling, and the phase of a rollout."""

from __future__ import annotations

from datetime import datetime, timezone

from tuneforge.controllers.children import termination_error
from tuneforge.controllers.deployment import rollout_phase
from tuneforge.controllers.status import Throttle, diff, set_condition

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T1 = datetime(2026, 1, 2, tzinfo=timezone.utc)


def test_transition_time_moves_only_when_status_changes() -> None:
    conditions = set_condition([], "Ready", True, "A", "a", generation=1, now=T0)
    same = set_condition(conditions, "Ready", True, "B", "b", generation=2, now=T1)
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["reason"] == "B" and same[0]["observedGeneration"] == 2
    flipped = set_condition(same, "Ready", False, "C", "c", generation=2, now=T1)
    assert flipped[0]["lastTransitionTime"] == "2026-01-02T00:00:00Z" and flipped[0]["status"] == "False"


def test_conditions_keep_their_order() -> None:
    conditions = set_condition([], "A", True, "R", "", generation=1, now=T0)
    conditions = set_condition(conditions, "B", True, "R", "", generation=1, now=T0)
    conditions = set_condition(conditions, "A", False, "R", "", generation=1, now=T1)
    assert [c["type"] for c in conditions] == ["A", "B"]


def test_diff_is_empty_when_nothing_changed() -> None:
    assert diff({"phase": "Queued", "a": 1}, {"phase": "Queued", "a": 1}) == {}
    assert diff({"phase": "Queued"}, {"phase": "Running"}) == {"phase": "Running"}


def test_throttle() -> None:
    throttle = Throttle(60)
    assert throttle.ready("x") and not throttle.ready("x") and throttle.ready("y")
    throttle.forget("x")
    assert throttle.ready("x")


def summary(**overrides: object) -> dict:
    base = {"desired": 1, "deadline_exceeded": False, "observed_generation": 2, "generation": 2,
            "updated": 1, "replicas": 1, "ready": 1}
    return {**base, **overrides}


def test_rollout_phase() -> None:
    assert rollout_phase(None, None)[0] == "Deploying"
    assert rollout_phase(summary(), "Deploying")[0] == "Ready"
    assert rollout_phase(summary(ready=0), "Deploying")[0] == "Deploying"
    assert rollout_phase(summary(ready=0), "Ready")[0] == "Degraded"
    # Old Pods still around (ready, but of the previous spec): not Ready yet.
    assert rollout_phase(summary(replicas=2, ready=1, updated=1), "Ready")[0] == "Deploying"
    assert rollout_phase(summary(observed_generation=1), "Ready")[0] == "Deploying"
    assert rollout_phase(summary(deadline_exceeded=True), "Deploying")[0] == "Failed"
    assert rollout_phase(summary(desired=0), "Ready")[0] == "Pending"


def test_termination_error_parses_json_and_falls_back_to_logs() -> None:
    pods = [{"created": "1", "terminated": {"exit_code": 1, "reason": "Error",
                                           "message": '{"code": "invalid_n_examples", "message": "too few", "param": "training_file"}'}}]
    error = termination_error(pods, default_code="training_failed", fallback="x")
    assert (error.code, error.message, error.param) == ("invalid_n_examples", "too few", "training_file")
    logs = [{"created": "1", "terminated": {"exit_code": 137, "reason": "OOMKilled", "message": ""}}]
    error = termination_error(logs, default_code="training_failed", fallback="trainer failed")
    assert error.code == "training_failed" and "OOMKilled" in error.message
