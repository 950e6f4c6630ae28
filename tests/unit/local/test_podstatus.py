"""The kubelet rules the local node agent reports Pod status by, plus its scheduler and probes."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tuneforge.local.podstatus import (
    ContainerRecord,
    PodConditions,
    Terminated,
    exit_code_of,
    log_tail,
    lost_container,
    pod_phase,
    pod_status,
    restart_delay,
    should_restart,
    termination_message,
)
from tuneforge.local.probes import ProbeSpecError, ProbeState, http_target
from tuneforge.local.scheduling import unschedulable_reason, wants_scheduling

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T1 = datetime(2026, 1, 1, 0, 1, tzinfo=timezone.utc)


def _terminated(code: int) -> ContainerRecord:
    record = ContainerRecord(name="c", image="i")
    record.start(T0)
    record.finish(Terminated(exit_code=code, started_at=T0, finished_at=T1))
    return record


@pytest.mark.parametrize("policy, code, phase", [
    ("Never", 0, "Succeeded"), ("Never", 1, "Failed"), ("Never", 137, "Failed"),
    ("OnFailure", 0, "Succeeded"), ("OnFailure", 3, "Running"), ("Always", 0, "Running"),
])
def test_phase_follows_restart_policy_and_exit_code(policy, code, phase):
    assert pod_phase(policy, [_terminated(code)], terminal_by_node=False) == phase


def test_phase_pending_until_started_and_running_while_running():
    record = ContainerRecord(name="c", image="i")
    assert pod_phase("Never", [record], False) == "Pending"
    record.start(T0)
    assert pod_phase("Never", [record], False) == "Running"


def test_a_deleted_pod_ends_failed_unless_every_container_succeeded():
    assert pod_phase("Always", [_terminated(0)], terminal_by_node=True) == "Succeeded"
    assert pod_phase("Always", [_terminated(143)], terminal_by_node=True) == "Failed"
    assert pod_phase("Always", [ContainerRecord(name="c", image="i")], terminal_by_node=True) == "Failed"


def test_termination_message_file_wins_and_logs_are_the_fallback_on_error():
    logs = "\n".join(f"line {i}" for i in range(200))
    assert termination_message("FallbackToLogsOnError", '{"code": "x"}\n', logs, 1) == '{"code": "x"}'
    fallback = termination_message("FallbackToLogsOnError", "", logs, 1)
    assert fallback.endswith("line 199") and fallback.splitlines()[0] == "line 120"
    assert termination_message("FallbackToLogsOnError", "", logs, 0) == ""
    assert termination_message("File", "", logs, 1) == ""
    assert len(log_tail("x" * 10_000)) == 2048
    assert len(termination_message("File", "y" * 10_000, "", 1)) == 4096


def test_exit_codes_of_signals_follow_the_container_convention():
    assert exit_code_of(-9) == (137, 9)
    assert exit_code_of(-15) == (143, 15)
    assert exit_code_of(3) == (3, None)


def test_restarts_count_and_back_off():
    assert should_restart("Always", 0) and should_restart("OnFailure", 1)
    assert not should_restart("OnFailure", 0) and not should_restart("Never", 1)
    assert [restart_delay(n) for n in (0, 1, 2, 10)] == [10, 20, 40, 300]
    record = _terminated(1)
    record.wait("CrashLoopBackOff", "back-off 10s")
    wire = record.to_wire()
    assert wire["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}
    assert wire["lastState"]["terminated"]["exitCode"] == 1
    record.start(T1)
    wire = record.to_wire()
    assert wire["restartCount"] == 1 and "running" in wire["state"]
    assert wire["lastState"]["terminated"]["reason"] == "Error"


def test_lost_container_reads_as_the_kubelets_unknown_status():
    wire = lost_container(T0, T1).to_wire()
    assert (wire["exitCode"], wire["reason"]) == (137, "ContainerStatusUnknown")


def test_condition_transition_time_moves_only_on_change():
    conditions = PodConditions()
    conditions.set("Ready", False, T0, "ContainersNotReady")
    conditions.set("Ready", False, T1, "ContainersNotReady")
    assert conditions.to_wire()[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    conditions.set("Ready", True, T1)
    assert conditions.to_wire()[0] == {"type": "Ready", "status": "True", "lastProbeTime": None,
                                       "lastTransitionTime": "2026-01-01T00:01:00Z"}


def test_pod_status_carries_the_pod_ip_and_containers():
    record = ContainerRecord(name="c", image="i")
    record.start(T0)
    record.ready = record.started = True
    status = pod_status(phase="Running", pod_ip="127.0.1.2", host_ip="127.0.0.1", start_time=T0,
                        records=[record], conditions=PodConditions())
    assert status["podIP"] == "127.0.1.2" and status["podIPs"] == [{"ip": "127.0.1.2"}]
    assert status["containerStatuses"][0]["ready"] is True
    assert status["containerStatuses"][0]["started"] is True


def test_scheduler_binds_what_fits_and_explains_what_does_not():
    labels, allocatable = {"kubernetes.io/os": "linux"}, {"cpu": "2", "memory": "1Gi", "pods": "110"}
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]},
           "status": {"phase": "Pending"}}
    assert wants_scheduling(pod)
    assert unschedulable_reason(pod, labels, allocatable) is None
    gpu = {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
    assert "Insufficient nvidia.com/gpu" in unschedulable_reason(gpu, labels, allocatable)
    selected = {"spec": {"nodeSelector": {"nvidia.com/gpu.product": "H100"}, "containers": [{}]}}
    assert "nvidia.com/gpu.product=H100" in unschedulable_reason(selected, labels, allocatable)
    assert not wants_scheduling({"metadata": {}, "spec": {"nodeName": "n"}})
    assert not wants_scheduling({"metadata": {"deletionTimestamp": "x"}, "spec": {}})
    assert not wants_scheduling({"metadata": {}, "spec": {"schedulerName": "kueue"}})


def test_probe_thresholds_and_named_ports():
    container = {"ports": [{"name": "http", "containerPort": 8000}]}
    target = http_target({"httpGet": {"path": "/health", "port": "http"}}, container, "127.0.1.3")
    assert (target.host, target.port, target.path) == ("127.0.1.3", 8000, "/health")
    with pytest.raises(ProbeSpecError, match="exec"):
        http_target({"exec": {"command": ["true"]}}, container, "127.0.1.3")
    with pytest.raises(ProbeSpecError, match="metrics"):
        http_target({"httpGet": {"port": "metrics"}}, container, "127.0.1.3")
    state = ProbeState.starting({"periodSeconds": 5, "failureThreshold": 2, "initialDelaySeconds": 3}, 100.0)
    assert not state.due(102.0) and state.due(103.0)
    assert state.record(False, 103.0) is None
    assert state.next_at == 108.0
    assert state.record(False, 108.0) == "failure"
    assert state.record(True, 113.0) == "success"


def test_a_reported_termination_reads_back_after_an_agent_restart():
    from tuneforge.local.podstatus import terminated_from_wire

    wire = Terminated(exit_code=143, started_at=T0, finished_at=T1, message="bye", signal=15).to_wire()
    back = terminated_from_wire(wire)
    assert (back.exit_code, back.started_at, back.finished_at, back.message, back.reason) == (143, T0, T1, "bye",
                                                                                               "Error")
    assert terminated_from_wire(None) is None
    assert terminated_from_wire(lost_container(T0, T1).to_wire()).reason == "ContainerStatusUnknown"


def test_each_agent_claims_its_own_pod_subnet_and_keeps_it(tmp_path):
    from tuneforge.local.node import PodIps, claim_subnet

    first, lock = claim_subnet(tmp_path / "locks", tmp_path / "a" / "pod-subnet")
    second, other_lock = claim_subnet(tmp_path / "locks", tmp_path / "b" / "pod-subnet")
    assert first != second and first.prefixlen == second.prefixlen == 24
    lock.close()
    again, lock = claim_subnet(tmp_path / "locks", tmp_path / "a" / "pod-subnet")
    assert again == first
    ips = PodIps(first)
    a, b = ips.take(None), ips.take(None)
    assert a != b and a.startswith(str(first.network_address)[:-1])
    assert ips.take(a) != a  # in use
    ips.release(a)
    assert ips.take(a) == a
    assert ips.take("127.0.250.9") != "127.0.250.9"  # outside this subnet
    lock.close()
    other_lock.close()
