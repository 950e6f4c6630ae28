"""What a finished run leaves in an S3 artifact store: the adapter, the merged model,
validation metrics, checkpoints and the result, all read back over real HTTP; and
gradient checkpointing changing memory, not the result."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tuneforge.jobfiles import METRICS, JobFiles
from tuneforge.storage import ArtifactStore

from tests.support.s3 import new_bucket
from tests.support.trainer_runs import echo_examples, make_run, write_jsonl
from tuneforge_trainer.loop import Trainer


def _upload(local: Path, uri: str) -> str:
    fsspec.filesystem("s3").put_file(str(local), uri)
    return uri


@pytest.fixture
def s3_run(tmp_path, tiny_model_dir, s3_endpoint):
    bucket = new_bucket("tuneforge-trainer-outputs")
    training = _upload(write_jsonl(tmp_path / "train.jsonl", echo_examples(16)), f"{bucket}/files/train.jsonl")
    validation = _upload(write_jsonl(tmp_path / "valid.jsonl", echo_examples(6, seed=1)), f"{bucket}/files/valid.jsonl")
    return make_run(tmp_path, tiny_model_dir, training, output_uri=f"{bucket}/team-a/fine-tuning/ftjob-test",
                    validation_file=validation, merge_adapter=True,
                    hyperparameters={"n_epochs": 2, "batch_size": 4, "max_seq_length": 64},
                    checkpoints={"every_n_steps": 3, "keep_last": 2})


def test_a_run_publishes_everything_to_s3(s3_run, tmp_path, tiny_model_dir):
    result = Trainer(s3_run, progress_interval_s=0.0).run()
    fs = fsspec.filesystem("s3")
    root = s3_run.output_uri.removeprefix("s3://")

    assert result.adapter_uri == f"{s3_run.output_uri}/adapter"
    assert result.merged_model_uri == f"{s3_run.output_uri}/merged"
    assert json.loads(fs.cat(f"{root}/result.json"))["fine_tuned_model"] == s3_run.fine_tuned_model
    assert json.loads(fs.cat(f"{root}/progress.json"))["status"] == "succeeded"

    steps = sorted(int(p.rsplit("-", 1)[1]) for p in fs.ls(f"{root}/checkpoints", detail=False))
    assert len(steps) == 2 and steps[-1] == result.steps, "keep_last=2 checkpoints, the last at the final step"

    files = JobFiles(ArtifactStore(s3_run.output_uri))
    metrics = files.metrics()
    assert not fs.exists(f"{root}/metrics.jsonl"), "no legacy file"
    assert len(fs.ls(f"{root}/metrics", detail=False)) == len(files.segments(METRICS)) > 0, "only log objects"
    assert len(metrics) == result.steps == 8
    assert any("valid_loss" in m for m in metrics), "periodic validation on a window of the validation set"
    full = [m for m in metrics if "full_valid_loss" in m]
    assert [m["step"] for m in full] == [4, 8], "the whole validation set at each epoch end"
    assert all(m["full_valid_loss"] > 0 and 0 <= m["full_valid_mean_token_accuracy"] <= 1 for m in full)

    fs.get(f"{root}/adapter/", str(tmp_path / "adapter") + "/", recursive=True)
    fs.get(f"{root}/merged/", str(tmp_path / "merged") + "/", recursive=True)
    ids = torch.tensor([[1, 200, 300, 400, 500, 2]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)(input_ids=ids).logits
    assert not torch.allclose(plain, adapted, atol=1e-4), "the adapter learned something"
    assert torch.allclose(merged, adapted, atol=1e-4), "the merged model is base + adapter"


def test_gradient_checkpointing_changes_memory_not_the_result(tmp_path, tiny_model_dir):
    training = write_jsonl(tmp_path / "train.jsonl", echo_examples(12))
    losses = {}
    for checkpointing in (False, True):
        run = make_run(tmp_path / str(checkpointing), tiny_model_dir, training,
                       hyperparameters={"n_epochs": 1, "batch_size": 4, "max_seq_length": 64,
                                        "gradient_checkpointing": checkpointing})
        trainer = Trainer(run, progress_interval_s=0.0)
        assert trainer._unwrapped().get_base_model().is_gradient_checkpointing is checkpointing
        trainer.run()
        metrics = JobFiles(ArtifactStore(run.output_uri)).metrics()
        losses[checkpointing] = [record["train_loss"] for record in metrics]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
