"""The autoscaler's rules (controllers.scaling), the load it reads and what it writes."""

from __future__ import annotations

import pytest

from tuneforge.api.v1alpha1 import ModelDeploymentResource
from tuneforge.api.v1alpha1.autoscaling import (
    HELD_FRESH_SECONDS,
    Autoscaling,
    held_requests,
    held_requests_annotation,
)
from tuneforge.api.v1alpha1.modeldeployment import initial_replicas, wanted_replicas
from tuneforge.controllers.autoscaler import _status_changes, engine_load
from tuneforge.controllers.scaling import Decision, Scaler, replicas_for


def policy(**fields) -> Autoscaling:
    return Autoscaling.model_validate({"minReplicas": 0, "maxReplicas": 4, "targetInFlight": 4, "windowSeconds": 10,
                                       "scaleDownDelaySeconds": 60, **fields})


def run(scaler: Scaler, autoscaling: Autoscaling, loads: list[float], *, start: float = 0.0, step: float = 1.0,
        current: int = 1, held: int = 0) -> tuple[int, list[Decision]]:
    """Feeds one load per tick, applying each decision, and returns the final count."""
    decisions = []
    for tick, load in enumerate(loads):
        decision = scaler.observe(start + tick * step, load, held, current, autoscaling)
        decisions.append(decision)
        current = decision.desired
    return current, decisions


@pytest.mark.parametrize(("load", "expected"), [(0, 0), (0.5, 1), (4, 1), (4.01, 2), (16, 4), (100, 4)])
def test_replicas_carry_the_load_at_the_target_within_the_bounds(load, expected):
    assert replicas_for(load, policy()) == expected
    assert replicas_for(0, policy(minReplicas=2)) == 2


def test_a_new_deployment_starts_with_one_replica_even_when_it_may_go_to_zero():
    assert initial_replicas(policy()) == 1
    assert initial_replicas(policy(minReplicas=3)) == 3


def test_load_above_the_target_adds_replicas_at_the_next_tick_after_the_average_rises():
    scaler = Scaler(started=0)
    current, decisions = run(scaler, policy(), [12] * 3)
    assert current == 3
    assert decisions[0].desired == 3 and decisions[0].reason == "load 12.0 over target 4 per replica"


def test_a_burst_shorter_than_the_window_is_averaged():
    scaler = Scaler(started=0)
    current, _ = run(scaler, policy(), [0] * 9 + [16])
    assert current == 1  # an average of 1.6 requests, not 16


def test_fewer_replicas_only_after_the_scale_down_delay_and_to_the_highest_recent_recommendation():
    autoscaling = policy()
    scaler = Scaler(started=0)
    current, _ = run(scaler, autoscaling, [12] * 20)
    assert current == 3
    current, decisions = run(scaler, autoscaling, [2] * 70, start=20, current=current)
    counts = [decision.desired for decision in decisions]
    # The 10 s average recommends 3 until t=22, 2 until t=26, then 1; each recommendation
    # holds for the 60 s delay after it was made.
    first_down = counts.index(2)
    assert 20 + first_down == 22 + 60 + 1
    assert 20 + counts.index(1) == 26 + 60 + 1
    assert current == 1
    assert "under target 4 per replica for 60s" in decisions[first_down].reason


def test_no_requests_for_the_delay_scales_to_zero_and_only_with_min_replicas_zero():
    current, decisions = run(Scaler(started=0), policy(), [0] * 62)
    assert current == 0
    assert decisions[-1].reason is None and any(d.reason == "no requests for 60s" for d in decisions)
    current, _ = run(Scaler(started=0), policy(minReplicas=1), [0] * 200)
    assert current == 1


def test_held_requests_scale_from_zero_at_once_without_waiting_for_the_average():
    scaler = Scaler(started=0)
    run(scaler, policy(), [0] * 100, current=0)
    decision = scaler.observe(100, 0, 1, 0, policy())
    assert (decision.desired, decision.reason) == (1, "1 request waiting for a replica")
    decision = Scaler(started=0).observe(0, 0, 9, 0, policy())
    assert (decision.desired, decision.reason) == (3, "9 requests waiting for a replica")


def test_a_restarted_operator_removes_nothing_before_it_has_watched_a_whole_delay():
    scaler = Scaler(started=1000)
    current, _ = run(scaler, policy(), [0] * 59, start=1000, current=3)
    assert current == 3
    current, _ = run(scaler, policy(), [0] * 5, start=1060, current=current)
    assert current == 0


def test_changed_bounds_apply_at_once():
    decision = Scaler(started=0).observe(0, 0, 0, 6, policy(maxReplicas=2))
    assert (decision.desired, decision.reason) == (2, "maxReplicas is 2")
    decision = Scaler(started=0).observe(0, 0, 0, 0, policy(minReplicas=2, maxReplicas=3))
    assert (decision.desired, decision.reason) == (2, "minReplicas is 2")


def test_min_above_max_is_refused_naming_the_fields():
    with pytest.raises(ValueError, match="minReplicas must not exceed maxReplicas"):
        policy(minReplicas=5, maxReplicas=2)


def test_the_held_requests_annotation_counts_while_fresh():
    annotations = held_requests_annotation(7, at=1000.0)
    assert held_requests(annotations, now=1000.0 + HELD_FRESH_SECONDS) == 7
    assert held_requests(annotations, now=1001.0 + HELD_FRESH_SECONDS) == 0
    key = next(iter(annotations))
    for garbage in ("", "7", "{}", '{"count": "x", "at": 1}', "[1, 2]"):
        assert held_requests({key: garbage}, now=1000.0) == 0
    assert held_requests(None, now=0) == 0


VLLM_EXPOSITION = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4
"""


def test_engine_load_is_running_plus_waiting_requests():
    assert engine_load(VLLM_EXPOSITION) == 5.0
    assert engine_load("") == 0.0


def test_status_is_written_on_decisions_and_count_changes_and_the_load_at_most_every_30_seconds():
    steady = Decision(desired=2, load=5.0, reason=None)
    status = {"autoscaling": {"currentReplicas": 2, "desiredReplicas": 2, "load": 4.0}}
    assert _status_changes(status, steady, current=2, now=100, last_written=90) is None
    assert _status_changes(status, steady, current=2, now=130, last_written=90)["load"] == 5.0
    assert _status_changes(status, steady, current=1, now=100, last_written=90)["currentReplicas"] == 1
    scaled = _status_changes(status, Decision(desired=3, load=9.0, reason="load 9.0 over target 4 per replica"),
                             current=2, now=100, last_written=99)
    assert scaled["desiredReplicas"] == 3 and scaled["reason"].startswith("load 9.0") and scaled["lastScaleTime"]


def deployment(spec: dict, status: dict | None = None) -> ModelDeploymentResource:
    return ModelDeploymentResource.model_validate({"apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment",
                                                   "metadata": {"name": "d", "namespace": "n"},
                                                   "spec": {"baseModel": "b", **spec}, "status": status})


def test_the_reconcile_applies_the_autoscalers_decision_within_the_bounds_or_the_fixed_count():
    assert wanted_replicas(deployment({"replicas": 3}).spec, {}) == 3
    autoscaled = deployment({"replicas": 3, "autoscaling": {"minReplicas": 0, "maxReplicas": 4}})
    assert wanted_replicas(autoscaled.spec, {}) == 1
    assert wanted_replicas(autoscaled.spec, {"autoscaling": {"desiredReplicas": 0}}) == 0
    assert wanted_replicas(autoscaled.spec, {"autoscaling": {"desiredReplicas": 9}}) == 4
