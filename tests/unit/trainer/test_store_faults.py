"""A training run whose training file, base model and outputs all live on an S3 store
that fails a fifth of its requests (503 SlowDown, dropped connections) succeeds: the
store's retries, not luck, carry it (the proxy's counters show the faults it survived)."""

from __future__ import annotations

import json
import uuid

import fsspec
import pytest
from s3fs import S3FileSystem
from safetensors.torch import load as load_safetensors

from tuneforge.config import settings

from tests.support.faulty_proxy import FaultPlan, running
from tests.support.s3 import new_bucket
from tests.support.trainer_runs import echo_examples, make_run, write_jsonl
from tuneforge_trainer.__main__ import main

FIFTH = FaultPlan(error_rate=0.2, drop_rate=0.03, seed=11)


@pytest.fixture
def faulty_store_run(tmp_path, tiny_model_dir, s3_endpoint, monkeypatch):
    """A run spec on a fresh bucket (filled directly on the server), and the proxy that
    every S3 client made afterwards talks to."""
    bucket = new_bucket(f"faults-{uuid.uuid4().hex[:12]}")
    server = fsspec.filesystem("s3")
    server.put(f"{tiny_model_dir}/", f"{bucket}/models/tiny/", recursive=True)
    training = f"{bucket}/files/train.jsonl"
    server.put_file(str(write_jsonl(tmp_path / "train.jsonl", echo_examples(16))), training)
    run = make_run(tmp_path, tiny_model_dir, training, base_model_uri=f"{bucket}/models/tiny",
                   output_uri=f"{bucket}/team-a/fine-tuning/ftjob-test",
                   hyperparameters={"n_epochs": 1, "batch_size": 4, "max_seq_length": 64},
                   checkpoints={"every_n_steps": 2, "keep_last": 1})
    spec = tmp_path / "run.json"
    spec.write_text(run.dump())
    # An empty weight cache, so the base model is downloaded through the proxy.
    monkeypatch.setenv("TUNEFORGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TUNEFORGE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    with running(s3_endpoint, FIFTH) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        S3FileSystem.clear_instance_cache()
        settings.cache_clear()
        yield run, spec, proxy
    S3FileSystem.clear_instance_cache()
    settings.cache_clear()


def test_a_run_on_a_store_failing_a_fifth_of_requests_succeeds(faulty_store_run, s3_endpoint, tmp_path):
    run, spec, proxy = faulty_store_run

    exit_code = main(["--run", str(spec)])

    termination = tmp_path / "termination-log"
    assert exit_code == 0, termination.read_text() if termination.exists() else "no termination message"
    server = S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)  # read back past the proxy
    root = run.output_uri.removeprefix("s3://")
    result = json.loads(server.cat(f"{root}/result.json"))
    assert result["adapter_uri"] == f"{run.output_uri}/adapter" and result["steps"] == 4
    assert json.loads(server.cat(f"{root}/progress.json"))["status"] == "succeeded"
    assert json.loads(server.cat(f"{root}/adapter/adapter_config.json"))["peft_type"] == "LORA"
    assert load_safetensors(server.cat(f"{root}/adapter/adapter_model.safetensors")), "a whole adapter"

    assert proxy.faults > 0, "the proxy injected faults"
    assert {"GET", "PUT", "HEAD"} <= set(proxy.faulted), f"GET, PUT, HEAD failed: {proxy.faulted}"
