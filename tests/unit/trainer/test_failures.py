"""Bad input ends the run with a termination message, a non-zero exit and no adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.config import settings
from tuneforge.jobfiles import JobFiles
from tuneforge.storage import ArtifactStore

from tests.support.trainer_runs import echo_examples, make_run, write_jsonl
from tuneforge_trainer.__main__ import main

GOOD = json.dumps(echo_examples(1)[0])
CASES = {
    "invalid_json_line": [GOOD] * 11 + ["{not json"],
    "invalid_n_examples": [GOOD] * 3,
    "missing_assistant_message": [GOOD] * 10 + [json.dumps({"messages": [{"role": "user", "content": "hi"}]})],
    "invalid_role": [GOOD] * 10
    + [json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]})],
    "invalid_weight": [GOOD] * 10
    + [json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 2}]})],
    "empty_file": [],
}


@pytest.fixture
def termination_log(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("TUNEFORGE_TERMINATION_LOG", str(path))
    settings.cache_clear()
    yield path
    settings.cache_clear()


def _run(tmp_path, run) -> int:
    spec = tmp_path / "run.json"
    spec.write_text(run.dump())
    return main(["--run", str(spec)])


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_dataset_error_code_terminates_the_run(code, tmp_path, tiny_model_dir, termination_log):
    training = tmp_path / "train.jsonl"
    training.write_text("".join(line + "\n" for line in CASES[code]))
    run = make_run(tmp_path, tiny_model_dir, training)
    assert _run(tmp_path, run) == 1
    message = json.loads(termination_log.read_text())
    assert set(message) == {"code", "message", "param"}
    assert message["code"] == code
    out = Path(run.output_uri)
    assert not (out / "adapter").exists() and not (out / "result.json").exists()
    assert json.loads((out / "progress.json").read_text())["status"] == "failed"
    last_event = JobFiles(ArtifactStore(str(out))).events()[-1]
    assert last_event["level"] == "error" and last_event["data"]["code"] == code


def test_bad_validation_file_names_its_param(tmp_path, tiny_model_dir, termination_log):
    training = write_jsonl(tmp_path / "train.jsonl", echo_examples(10))
    validation = tmp_path / "valid.jsonl"
    validation.write_text("[1, 2]\n")
    run = make_run(tmp_path, tiny_model_dir, training, validation_file=str(validation))
    assert _run(tmp_path, run) == 1
    message = json.loads(termination_log.read_text())
    assert message["code"] == "invalid_json_line" and message["param"] == "validation_file"
    assert "line 1" in message["message"]


def test_qlora_on_cpu_is_a_clear_error(tmp_path, tiny_model_dir, termination_log):
    training = write_jsonl(tmp_path / "train.jsonl", echo_examples(10))
    run = make_run(tmp_path, tiny_model_dir, training, lora={"quantize_4bit": True})
    assert _run(tmp_path, run) == 1
    message = json.loads(termination_log.read_text())
    assert message == {"code": "unsupported_hardware", "param": "lora.quantize_4bit", "message": message["message"]}
    assert "GPU" in message["message"]


def test_missing_files_and_models(tmp_path, tiny_model_dir, termination_log):
    run = make_run(tmp_path, tiny_model_dir, tmp_path / "nope.jsonl")
    assert _run(tmp_path, run) == 1
    assert json.loads(termination_log.read_text())["code"] == "file_not_found"
    training = write_jsonl(tmp_path / "train.jsonl", echo_examples(10))
    run = make_run(tmp_path, tmp_path / "no-model", training)
    assert _run(tmp_path, run) == 1
    assert json.loads(termination_log.read_text())["code"] == "model_load_failed"


def test_unreadable_run_spec(tmp_path, termination_log):
    spec = tmp_path / "run.json"
    spec.write_text(json.dumps({"job_id": "x", "surprise": 1}))
    assert main(["--run", str(spec)]) == 1
    assert json.loads(termination_log.read_text())["code"] == "invalid_run_spec"


def test_console_script_exits_non_zero(tmp_path, tiny_model_dir):
    """The real entry point: exit status and termination log of a separate process."""
    training = tmp_path / "train.jsonl"
    training.write_text("".join(line + "\n" for line in CASES["invalid_n_examples"]))
    spec = tmp_path / "run.json"
    spec.write_text(make_run(tmp_path, tiny_model_dir, training).dump())
    log = tmp_path / "termination-log"
    proc = subprocess.run([sys.executable, "-m", "tuneforge_trainer", "--run", str(spec)],
                          env={**os.environ, "TUNEFORGE_TERMINATION_LOG": str(log)}, capture_output=True, timeout=300)
    assert proc.returncode == 1
    assert json.loads(log.read_text())["code"] == "invalid_n_examples"
