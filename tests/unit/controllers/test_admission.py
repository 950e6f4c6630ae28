"""Reading refusals: which Events and Job states mean the API server refuses a workload's
Pods (tuneforge.controllers.children), and how long a refusal has lasted
(tuneforge.controllers.admission). The status patches they lead to are checked in
test_status_models.py; tests/integration/controllers/test_pod_admission.py has the real
Job controller and admission plugins produce them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tuneforge.controllers import admission, kube
from tuneforge.controllers.children import (
    deployment_summary,
    job_summary,
    pod_creation_refusal,
    short_of_pods,
)
from tuneforge.controllers.status import ReconcileState, timestamp, utcnow

QUOTA = 'pods "j-abcde" is forbidden: exceeded quota: none, requested: pods=1, used: pods=0, limited: pods=0'


def event(reason: str, message: str = "", **times: str) -> dict:
    return {"reason": reason, "message": message, **times}


def test_the_newest_attempt_decides() -> None:
    refused = event("FailedCreate", f"Error creating: {QUOTA}", lastTimestamp="2026-01-01T00:00:10Z")
    created = event("SuccessfulCreate", "Created pod: j-x", lastTimestamp="2026-01-01T00:00:05Z")
    assert pod_creation_refusal([created, refused]) == QUOTA
    later = event("SuccessfulCreate", "Created pod: j-y", lastTimestamp="2026-01-01T00:00:20Z")
    assert pod_creation_refusal([refused, later, created]) is None
    same_second = event("SuccessfulCreate", "Created pod: j-z", lastTimestamp="2026-01-01T00:00:10Z")
    assert pod_creation_refusal([refused, same_second]) is None


def test_other_events_and_none_at_all_are_no_refusal() -> None:
    assert pod_creation_refusal([]) is None
    assert pod_creation_refusal([event("Completed", "Job completed", lastTimestamp="2026-01-01T00:00:10Z")]) is None


def test_aggregated_and_new_style_events_are_read() -> None:
    """The event recorder folds a burst of similar Events into one with a prefixed message;
    events.k8s.io Events carry the time of their series instead of lastTimestamp."""
    combined = event("FailedCreate", f"(combined from similar events): Error creating: {QUOTA}",
                     series={"lastObservedTime": "2026-01-01T00:01:00.123456Z"},
                     eventTime="2026-01-01T00:00:00.000001Z")
    created = event("SuccessfulCreate", "Created pod: j-x", lastTimestamp="2026-01-01T00:00:30Z")
    assert pod_creation_refusal([combined, created]) == QUOTA


def _job(**status: object) -> dict:
    return job_summary({"metadata": {"name": "j", "uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z"},
                        "spec": {"parallelism": 2}, "status": status})


@pytest.mark.parametrize(("status", "short"), [
    ({}, False),  # not started: the Job controller has not tried yet (or Kueue holds it)
    ({"startTime": "2026-01-01T00:00:00Z"}, True),
    ({"startTime": "2026-01-01T00:00:00Z", "active": 1}, True),  # one Pod of a group of two
    ({"startTime": "2026-01-01T00:00:00Z", "active": 2}, False),
    ({"startTime": "2026-01-01T00:00:00Z", "conditions": [{"type": "Failed", "status": "True"}]}, False),
])
def test_events_are_read_only_for_a_started_job_short_of_pods(status: dict, short: bool) -> None:
    assert short_of_pods(_job(**status)) is short


def test_a_deployments_replica_failure_is_its_refusal() -> None:
    failure = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": QUOTA}
    assert deployment_summary({"metadata": {"name": "d"}, "status": {"conditions": [failure]}})["replica_failure"] == QUOTA
    assert deployment_summary({"metadata": {"name": "d"}, "status": {}})["replica_failure"] is None


@pytest.fixture
def events(monkeypatch) -> list[dict]:
    recorded: list[dict] = []
    monkeypatch.setattr(kube, "events_of", lambda namespace, uid: recorded)
    monkeypatch.setattr(admission.kopf, "warn", lambda *args, **kwargs: None)
    monkeypatch.setattr(admission.kopf, "info", lambda *args, **kwargs: None)
    return recorded


def _state(conditions: list[dict] | None = None) -> ReconcileState:
    return ReconcileState({"metadata": {"name": "ftjob-a", "generation": 1}}, {"conditions": conditions or []})


def _started(created: str) -> dict:
    return job_summary({"metadata": {"name": "j", "uid": "u", "creationTimestamp": created},
                        "spec": {}, "status": {"startTime": created}})


def test_the_timeout_counts_from_the_first_refusal_seen(events) -> None:
    events.append(event("FailedCreate", QUOTA, lastTimestamp=timestamp()))
    long_ago = timestamp(utcnow() - timedelta(hours=1))
    earlier = [{"type": "PodsAdmitted", "status": "False", "reason": "PodCreationRefused", "message": QUOTA,
                "lastTransitionTime": timestamp(utcnow() - timedelta(seconds=30))}]
    assert admission.follow(_state(earlier), "ns", _started(long_ago), what="trainer", timeout=60) is None
    error = admission.follow(_state(earlier), "ns", _started(long_ago), what="trainer", timeout=20)
    assert error.code == "pod_creation_refused" and QUOTA in error.message


def test_a_new_job_refused_like_an_earlier_one_gets_its_own_timeout(events) -> None:
    """After a pause or a restart the condition may still be False from the earlier Job;
    the new Job's refusals are timed from its creation."""
    events.append(event("FailedCreate", QUOTA, lastTimestamp=timestamp()))
    stale = [{"type": "PodsAdmitted", "status": "False", "reason": "PodCreationRefused", "message": QUOTA,
              "lastTransitionTime": timestamp(utcnow() - timedelta(hours=1))}]
    assert admission.follow(_state(stale), "ns", _started(timestamp()), what="trainer", timeout=60) is None


def test_a_job_never_refused_gets_no_condition(events) -> None:
    state = _state()
    events.append(event("SuccessfulCreate", "Created pod: j-x", lastTimestamp=timestamp()))
    assert admission.follow(state, "ns", _started(timestamp()), what="trainer", timeout=0) is None
    assert state.status["conditions"] == []
