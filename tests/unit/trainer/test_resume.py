"""A trainer killed with SIGKILL resumes from its last complete checkpoint and ends where
an uninterrupted run ends: same steps, same trained tokens, (nearly) the same adapter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tuneforge.jobfiles import JobFiles
from tuneforge.storage import ArtifactStore

from tests.support.trainer_runs import echo_examples, make_run, write_jsonl
from tuneforge_trainer import checkpoint


def _start(tmp_path: Path, name: str, model_dir: Path, training: Path) -> tuple[subprocess.Popen, Path]:
    work = tmp_path / name
    work.mkdir()
    run = make_run(work, model_dir, training, hyperparameters={"n_epochs": 2, "batch_size": 1, "max_seq_length": 64},
                   checkpoints={"every_n_steps": 8, "keep_last": 2})
    spec = work / "run.json"
    spec.write_text(run.dump())
    env = {**os.environ, "TUNEFORGE_TERMINATION_LOG": str(work / "termination-log"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge_trainer", "--run", str(spec)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, Path(run.output_uri)


def test_sigkill_then_restart_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    training = write_jsonl(tmp_path / "train.jsonl", echo_examples(24))

    reference, ref_out = _start(tmp_path, "reference", tiny_model_dir, training)
    assert reference.wait(timeout=600) == 0, reference.stderr.read().decode()[-3000:]

    victim, out = _start(tmp_path, "victim", tiny_model_dir, training)
    store = ArtifactStore(str(out))
    deadline = time.monotonic() + 300
    while not checkpoint.complete_checkpoints(store):
        assert victim.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = checkpoint.complete_checkpoints(store)[-1]
    assert not (out / "result.json").exists() and not (out / "adapter").exists()
    assert killed_at < 48

    spec = tmp_path / "victim" / "run.json"
    env = {**os.environ, "TUNEFORGE_TERMINATION_LOG": str(tmp_path / "tl"), "OMP_NUM_THREADS": "2"}
    resumed = subprocess.run([sys.executable, "-m", "tuneforge_trainer", "--run", str(spec)], env=env,
                             capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]

    files = JobFiles(store)
    events = files.events()
    assert any(e["message"].startswith(f"Resumed from checkpoint step-{killed_at} ") for e in events)
    expected, got = (json.loads((d / "result.json").read_text()) for d in (ref_out, out))
    assert got["steps"] == expected["steps"] == 48
    assert got["trained_tokens"] == expected["trained_tokens"]
    metric_steps = [record["step"] for record in files.metrics()]
    assert metric_steps == list(range(1, 49))  # each step reported once

    ref_weights = load_file(ref_out / "adapter" / "adapter_model.safetensors")
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert ref_weights.keys() == weights.keys()
    for name in ref_weights:
        assert torch.allclose(ref_weights[name], weights[name], atol=1e-5, rtol=1e-4), name
    assert len(checkpoint.complete_checkpoints(store)) == 2  # keep_last
