"""Several processes train the adapter one process trains, and SIGTERM loses no finished
step: the trainer's own entry point, real gloo process groups started by torchrun, the
tiny model on CPU.

Tolerance: two processes split each step's rows between them, so every gradient is the
same sum taken in another order; in fp32 that differs in the last bits, and Adam's
normalised updates carry it through the run (measured: 2e-8 relative to the adapter's
size after 8 steps). The adapters must agree to 1e-5: 500 times that rounding, and far
below what one wrong, missing or repeated step changes (the test checks that it would
notice: the adapter of 4 steps earlier differs by 4e-3)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tuneforge.contracts import TrainerExit
from tuneforge.jobfiles import JobFiles
from tuneforge.storage import ArtifactStore

from tests.support.trainer_runs import echo_examples, make_run, write_jsonl


def _spec(tmp_path: Path, name: str, model_dir: Path, training: Path, **overrides) -> Path:
    work = tmp_path / name
    work.mkdir()
    run = make_run(work, model_dir, training, **overrides)
    (work / "run.json").write_text(run.dump())
    return work


def _start(work: Path) -> subprocess.Popen:
    env = {**os.environ, "TUNEFORGE_TERMINATION_LOG": str(work / "termination-log"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tuneforge_trainer", "--run", str(work / "run.json")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _train(work: Path) -> None:
    proc = _start(work)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-4000:]


def _adapter(work: Path, where: str = "adapter") -> dict[str, torch.Tensor]:
    return load_file(work / "out" / where / "adapter_model.safetensors")


def _relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    diff = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5
    size = sum(float(a[k].pow(2).sum()) for k in a) ** 0.5
    return diff / size


def test_two_processes_train_the_adapter_one_process_trains(tmp_path, tiny_model_dir):
    training = write_jsonl(tmp_path / "train.jsonl", echo_examples(24))
    shape = {"hyperparameters": {"n_epochs": 2, "batch_size": 6, "max_seq_length": 64},
             "checkpoints": {"every_n_steps": 4, "keep_last": 10}}
    one = _spec(tmp_path, "one", tiny_model_dir, training, **shape)
    two = _spec(tmp_path, "two", tiny_model_dir, training, distributed={"processes_per_node": 2}, **shape)
    _train(one)
    _train(two)

    assert _relative_difference(_adapter(one), _adapter(two)) < 1e-5
    assert _relative_difference(_adapter(one), _adapter(one, "checkpoints/step-4")) > 1e-3
    result = json.loads((two / "out" / "result.json").read_text())
    assert result["performance"]["world_size"] == 2 and result["performance"]["tokens_per_second"] > 0
    losses = {w: [m["train_loss"] for m in JobFiles(ArtifactStore(str(w / "out"))).metrics()] for w in (one, two)}
    assert len(losses[one]) == len(losses[two]) == 8
    assert all(abs(a - b) <= 1e-6 * abs(a) for a, b in zip(losses[one], losses[two]))


def _wait_for_step(store: ArtifactStore, proc: subprocess.Popen, step: int) -> None:
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-4000:]
        assert time.monotonic() < deadline
        progress = JobFiles(store).progress()
        if progress is not None and progress.step >= step:
            return
        time.sleep(0.05)


def test_sigterm_checkpoints_the_step_in_progress_and_the_resumed_run_ends_as_an_uninterrupted_one(
        tmp_path, tiny_model_dir):
    training = write_jsonl(tmp_path / "train.jsonl", echo_examples(200))  # 400 steps: seconds, not one
    shape = {"hyperparameters": {"n_epochs": 2, "batch_size": 1, "max_seq_length": 64},
             "checkpoints": {"every_n_steps": 1000, "keep_last": 2}}
    reference = _spec(tmp_path, "reference", tiny_model_dir, training, **shape)
    victim = _spec(tmp_path, "victim", tiny_model_dir, training, **shape)
    _train(reference)

    proc = _start(victim)
    store = ArtifactStore(str(victim / "out"))
    _wait_for_step(store, proc, 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == TrainerExit.preempted
    message = json.loads((victim / "termination-log").read_text())
    assert message["code"] == "preempted"
    stopped_at = JobFiles(store).complete_checkpoints()[-1]
    assert 3 <= stopped_at < 200  # the step in progress was finished and saved; no epoch-end checkpoint yet
    assert [m["step"] for m in JobFiles(store).metrics()] == list(range(1, stopped_at + 1))

    _train(victim)
    assert [m["step"] for m in JobFiles(store).metrics()] == list(range(1, 401))
    assert json.loads((victim / "out" / "result.json").read_text())["steps"] == 400
    assert _relative_difference(_adapter(reference), _adapter(victim)) < 1e-5


def test_two_processes_resume_a_checkpoint_written_by_one(tmp_path, tiny_model_dir):
    """Checkpoints hold full state by parameter name, so the world size may change."""
    training = write_jsonl(tmp_path / "train.jsonl", echo_examples(24))
    shape = {"hyperparameters": {"n_epochs": 2, "batch_size": 6, "max_seq_length": 64},
             "checkpoints": {"every_n_steps": 4, "keep_last": 10}}
    one = _spec(tmp_path, "one", tiny_model_dir, training, **shape)
    _train(one)
    switched = _spec(tmp_path, "switched", tiny_model_dir, training, distributed={"processes_per_node": 2}, **shape)
    store = ArtifactStore(str(switched / "out"))
    (switched / "out" / "checkpoints").mkdir(parents=True)
    shutil.copytree(one / "out" / "checkpoints" / "step-4", switched / "out" / "checkpoints" / "step-4")
    _train(switched)
    events = [e["message"] for e in JobFiles(store).events()]
    assert "Resumed from checkpoint step-4 on 2 process(es)" in events
    assert _relative_difference(_adapter(one), _adapter(switched)) < 1e-5
