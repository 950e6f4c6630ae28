"""What the FineTuningJob controller reads from a job's store directory: progress,
the checkpoint summary and the result, as the trainer leaves them in a real (local) store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.api.v1alpha1 import FineTuningJobResource
from tuneforge.config import settings
from tuneforge.controllers import finetuning
from tuneforge.controllers.status import ReconcileState
from tuneforge.controllers.store import store

BODY = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
        "metadata": {"name": "ftjob-abc", "namespace": "team", "uid": "u-ft"},
        "spec": {"baseModel": "smollm2", "trainingFile": "file-1234abcd"}}


@pytest.fixture
def job_dir(tmp_path, monkeypatch) -> Path:
    """The job's directory in a store rooted under tmp_path, the controller pointed at it."""
    monkeypatch.setenv("TUNEFORGE_STORE_ROOT", f"file://{tmp_path}/store")
    settings.cache_clear()
    store.cache_clear()
    yield tmp_path / "store" / "team" / "fine-tuning" / "ftjob-abc"
    settings.cache_clear()
    store.cache_clear()


def _checkpoint(job_dir: Path, step: int, *, complete: bool) -> None:
    """A checkpoint directory as the trainer writes it; without its marker it is one still
    being uploaded to an object store."""
    directory = job_dir / "checkpoints" / f"step-{step}"
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        (directory / "COMPLETE").write_text("")


def test_checkpoint_summary_counts_only_complete_checkpoints(job_dir) -> None:
    job_dir.mkdir(parents=True)
    (job_dir / "progress.json").write_text(json.dumps({"status": "running", "step": 7, "total_steps": 20,
                                                       "epoch": 0.35, "trained_tokens": 700, "train_loss": 1.25}))
    _checkpoint(job_dir, 2, complete=True)
    _checkpoint(job_dir, 4, complete=True)
    _checkpoint(job_dir, 6, complete=False)
    state = ReconcileState(BODY, {})
    finetuning._copy_progress(FineTuningJobResource.model_validate(BODY), state)
    assert state.status["progress"] == {"step": 7, "totalSteps": 20, "epoch": 0.35}
    assert state.status["trainedTokens"] == 700 and state.status["metrics"] == {"trainLoss": 1.25}
    assert state.status["checkpoints"] == {"count": 2, "latestStep": 4,
                                           "latestUri": f"file://{job_dir}/checkpoints/step-4"}


def test_no_summary_before_the_first_complete_checkpoint(job_dir) -> None:
    job_dir.mkdir(parents=True)
    (job_dir / "progress.json").write_text(json.dumps({"status": "running", "step": 1, "total_steps": 20}))
    _checkpoint(job_dir, 1, complete=False)
    state = ReconcileState(BODY, {})
    finetuning._copy_progress(FineTuningJobResource.model_validate(BODY), state)
    assert state.status["progress"]["step"] == 1 and "checkpoints" not in state.status
