"""How a run of several processes is launched, and how its ending becomes one exit status."""

from __future__ import annotations

import errno

import pytest
import torch

from tuneforge.contracts import ErrorInfo, TrainerExit, TrainingRun

from tuneforge_trainer import launch
from tuneforge_trainer.errors import Preempted, TrainerError, outcome


def _run(**distributed) -> TrainingRun:
    return TrainingRun(job_id="ftjob-abc", namespace="team-a", base_model="tiny", base_model_uri="file:///m",
                       training_file="file:///t.jsonl", output_uri="file:///out", fine_tuned_model="ft:x",
                       distributed=distributed)


def test_one_process_needs_no_launcher_but_fsdp_always_does():
    assert not launch.needs_launcher(_run())
    assert launch.needs_launcher(_run(processes_per_node=2))
    assert launch.needs_launcher(_run(strategy="fsdp"))


def test_one_node_uses_a_standalone_rendezvous():
    argv = launch.torchrun_argv(_run(processes_per_node=4), "/etc/tuneforge/run.json", node_rank=0)
    assert argv[1:4] == ["-m", "torch.distributed.run", "--nnodes=1"]
    assert "--nproc-per-node=4" in argv and "--standalone" in argv and "--max-restarts=0" in argv
    assert argv[-5:] == ["-m", "tuneforge_trainer", "--", "--run", "/etc/tuneforge/run.json"]


def test_several_nodes_meet_at_index_zero_which_hosts_the_store():
    run = _run(nodes=3, processes_per_node=8, rendezvous_host="ftjob-abc-trainer-0.ftjob-abc-trainer")
    first = launch.torchrun_argv(run, "run.json", node_rank=0)
    other = launch.torchrun_argv(run, "run.json", node_rank=2)
    assert "--rdzv-endpoint=ftjob-abc-trainer-0.ftjob-abc-trainer:29400" in first
    assert "--rdzv-backend=c10d" in first and "--rdzv-id=ftjob-abc" in first and "--standalone" not in first
    assert "--rdzv-conf=is_host=true" in first and "--rdzv-conf=is_host=false" in other


def test_several_nodes_without_a_rendezvous_host_is_refused():
    with pytest.raises(ValueError, match="rendezvous_host"):
        launch.torchrun_argv(_run(nodes=2), "run.json", node_rank=0)


FATAL = (TrainerExit.fatal, ErrorInfo(code="invalid_json_line", message="line 3: not JSON", param="training_file"))
STOPPED = (TrainerExit.preempted, ErrorInfo(code="preempted", message="stopped"))
FAULT = (TrainerExit.retryable, ErrorInfo(code="transient_failure", message="NCCL timeout"))


def test_a_fatal_error_on_any_rank_decides_the_group():
    assert launch.decide(1, [FAULT, STOPPED, FATAL], signalled=False) == FATAL
    assert launch.decide(1, [FAULT, STOPPED], signalled=True) == STOPPED
    assert launch.decide(1, [FAULT], signalled=False) == FAULT


def test_success_and_silent_deaths():
    assert launch.decide(0, [], signalled=False) == (TrainerExit.succeeded, None)
    status, info = launch.decide(1, [], signalled=True)
    assert status == TrainerExit.preempted
    status, info = launch.decide(1, [], signalled=False)
    assert status == TrainerExit.retryable and "without a report" in info.message


def test_outcomes_travel_through_the_outcome_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(launch.OUTCOME_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    launch.record_outcome(*FATAL)
    assert launch.read_outcomes(tmp_path) == [FATAL]


@pytest.mark.parametrize("exc, status, code", [
    (TrainerError("invalid_n_examples", "too few"), TrainerExit.fatal, "invalid_n_examples"),
    (Preempted("stopped after step 3"), TrainerExit.preempted, "preempted"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), TrainerExit.retryable, "transient_failure"),
    (RuntimeError("NCCL communicator was aborted on rank 1"), TrainerExit.retryable, "transient_failure"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), TrainerExit.retryable, "transient_failure"),
    (ConnectionResetError(errno.ECONNRESET, "reset by peer"), TrainerExit.retryable, "transient_failure"),
    (TimeoutError("read timed out"), TrainerExit.retryable, "transient_failure"),
    (KeyError("lm_head"), TrainerExit.fatal, "training_failed"),
    (ValueError("shapes do not match"), TrainerExit.fatal, "training_failed"),
])
def test_failures_map_onto_exit_statuses(exc, status, code):
    got_status, info = outcome(exc)
    assert (got_status, info.code) == (status, code)
