"""Executing a valid batch against a real loopback upstream: results, retries, failures,
registered Files, and the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from openai.types.chat import ChatCompletion

from tests.support.batches import request_line
from tests.support.openai_upstream import Step
from tuneforge_inference.batch.retry import RetryPolicy
from tuneforge_inference.batch.runner import RunnerTuning, run_batch

FAST = RunnerTuning(retry=RetryPolicy(base_delay_s=0.01, max_delay_s=0.05), tick_s=0.1)


async def test_successful_batch_outputs_one_completion_per_request(batch, upstream):
    inputs = [request_line(f"req-{i}", f"question number {i}") for i in range(120)]
    batch.write_input(inputs)
    assert await run_batch(batch.spec(upstream, concurrency=16), FAST) == "completed"

    output = batch.lines("output.jsonl")
    assert sorted(line["custom_id"] for line in output) == sorted(i["custom_id"] for i in inputs)
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith("upstream-")
        completion = ChatCompletion.model_validate(line["response"]["body"])
        number = line["custom_id"].removeprefix("req-")
        assert completion.choices[0].message.content == f"echo: question number {number}"
    progress = batch.progress()
    assert progress["status"] == "completed"
    assert progress["request_counts"] == {"total": 120, "completed": 120, "failed": 0}
    prompt = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    completion_tokens = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)
    assert progress["usage"] == {
        "input_tokens": prompt,
        "output_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }
    assert progress["output_file_id"] == "file-out"
    assert progress["error_file_id"] is None, "an empty error file is not registered"
    assert all(progress[f"{s}_at"] for s in ("in_progress", "finalizing", "completed"))

    meta = json.loads((batch.file_dir("file-out") / "meta.json").read_text())
    content = (batch.file_dir("file-out") / "content").read_bytes()
    assert meta["id"] == "file-out" and meta["purpose"] == "batch_output" and meta["object"] == "file"
    assert meta["status"] == "processed" and meta["bytes"] == len(content)
    assert content == (batch.batch_dir / "output.jsonl").read_bytes()
    assert not batch.file_dir("file-err").exists()
    assert upstream.app.auth_failures == 0 and upstream.stats()["requests"] == 120


async def test_429_and_500_are_retried_until_success_honouring_retry_after(batch, upstream):
    upstream.app.config.scripts = {
        "slow down": [Step(429, {"retry-after": "1"})],
        "flaky": [Step(500), Step(503), Step(502)],
        "throttled-ms": [Step(429, {"retry-after-ms": "300"}), Step(429, {"retry-after-ms": "300"})],
    }
    batch.write_input(
        [request_line("a", "slow down"), request_line("b", "flaky"), request_line("c", "throttled-ms")]
        + [request_line(f"ok-{i}") for i in range(5)]
    )
    assert await run_batch(batch.spec(upstream, max_retries=3), FAST) == "completed"

    assert {line["custom_id"] for line in batch.lines("output.jsonl")} == {"a", "b", "c"} | {
        f"ok-{i}" for i in range(5)
    }
    assert batch.lines("errors.jsonl") == []
    stats = upstream.stats()
    assert stats["attempts"]["slow down"] == 2
    assert stats["attempts"]["flaky"] == 4
    assert stats["attempts"]["throttled-ms"] == 3
    first, second = stats["arrivals"]["slow down"]
    assert second - first >= 1.0, "the retry came before Retry-After allowed"
    gaps = [b - a for a, b in zip(stats["arrivals"]["throttled-ms"], stats["arrivals"]["throttled-ms"][1:])]
    assert min(gaps) >= 0.3


async def test_a_busy_target_is_waited_for_beyond_max_retries(batch, upstream):
    upstream.app.config.scripts = {"busy": [Step(429)] * 6}
    batch.write_input([request_line("queued", "busy"), request_line("fine")])
    assert await run_batch(batch.spec(upstream, max_retries=1), FAST) == "completed"

    assert {line["custom_id"] for line in batch.lines("output.jsonl")} == {"queued", "fine"}
    assert batch.lines("errors.jsonl") == []
    assert upstream.stats()["attempts"]["busy"] == 7, "six 429s, then the answer"


async def test_permanent_and_exhausted_failures_land_in_the_error_file(batch, upstream):
    upstream.app.config.scripts = {
        "bad request": [Step(400)],
        "always down": [Step(503)] * 10,
    }
    batch.write_input(
        [request_line("bad", "bad request"), request_line("down", "always down"), request_line("fine")]
    )
    assert await run_batch(batch.spec(upstream, max_retries=2), FAST) == "completed"

    errors = {line["custom_id"]: line for line in batch.lines("errors.jsonl")}
    assert set(errors) == {"bad", "down"}
    assert errors["bad"]["response"]["status_code"] == 400
    assert errors["bad"]["response"]["body"]["error"]["code"] == "scripted_400"
    assert errors["down"]["response"]["status_code"] == 503
    assert errors["bad"]["error"] is None
    stats = upstream.stats()
    assert stats["attempts"]["bad request"] == 1, "a 400 must not be retried"
    assert stats["attempts"]["always down"] == 3, "max_retries=2 means three attempts"
    progress = batch.progress()
    assert progress["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    assert progress["error_file_id"] == "file-err"
    meta = json.loads((batch.file_dir("file-err") / "meta.json").read_text())
    assert meta["bytes"] == (batch.file_dir("file-err") / "content").stat().st_size
    assert (batch.file_dir("file-err") / "content").read_bytes() == (batch.batch_dir / "errors.jsonl").read_bytes()


async def test_timeouts_and_unreachable_targets_become_error_lines(batch, upstream):
    upstream.app.config.scripts = {"stuck": [Step(200, delay_s=1.0)] * 3}
    batch.write_input([request_line("stuck", "stuck"), request_line("quick")])
    spec = batch.spec(upstream, max_retries=1, request_timeout_s=0.3)
    assert await run_batch(spec, FAST) == "completed"
    [error] = batch.lines("errors.jsonl")
    assert error["custom_id"] == "stuck" and error["response"] is None
    assert error["error"]["code"] == "request_timeout"
    assert upstream.stats()["attempts"]["stuck"] == 2

    unreachable = batch.__class__(batch.root / "second")
    unreachable.root.mkdir()
    unreachable.write_input([request_line("x")])
    assert await run_batch(unreachable.spec("http://127.0.0.1:9/v1", max_retries=1), FAST) == "completed"
    [error] = unreachable.lines("errors.jsonl")
    assert error["error"]["code"] == "connection_error" and error["response"] is None


async def test_rerunning_a_finished_batch_changes_nothing(batch, upstream):
    batch.write_input([request_line(f"r{i}") for i in range(10)])
    spec = batch.spec(upstream)
    assert await run_batch(spec, FAST) == "completed"
    before = (batch.batch_dir / "output.jsonl").read_bytes()
    assert await run_batch(spec, FAST) == "completed"
    assert upstream.stats()["requests"] == 10
    # A crash between publishing and the final progress.json re-finalizes from the journal.
    (batch.batch_dir / "progress.json").unlink()
    assert await run_batch(spec, FAST) == "completed"
    assert (batch.batch_dir / "output.jsonl").read_bytes() == before
    assert batch.progress()["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    assert upstream.stats()["requests"] == 10


def test_cli_exits_1_with_a_termination_message_when_it_cannot_run(batch, upstream, monkeypatch, tmp_path):
    batch.write_input([request_line("r1")])
    spec_path = batch.write_spec(batch.spec(upstream, api_key_env="NO_SUCH_KEY_VAR"))
    proc = subprocess.run(
        [sys.executable, "-m", "tuneforge_inference.batch", "--run", str(spec_path)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["code"] == "runner_error" and "NO_SUCH_KEY_VAR" in message["message"]
    assert upstream.stats()["requests"] == 0


def test_cli_exits_75_for_a_retry_when_the_store_fails_under_it(batch, upstream, tmp_path):
    batch.write_input([request_line("r1")])
    spec = batch.spec(upstream)
    spec_path = batch.write_spec(spec.model_copy(update={"output_uri": f"file://{tmp_path}/not-a-dir/x"}))
    (tmp_path / "not-a-dir").write_text("a file where the batch directory should be")
    proc = subprocess.run(
        [sys.executable, "-m", "tuneforge_inference.batch", "--run", str(spec_path)], capture_output=True, text=True
    )
    assert proc.returncode == 75, proc.stderr
    assert json.loads((tmp_path / "termination-log").read_text())["code"] == "runner_error"
