"""A batch with an invalid input file fails with OpenAI's error code and line number, and
sends nothing upstream."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.batches import request_line
from tuneforge_inference.batch.runner import run_batch


def _with(line: int, bad: dict | str, n: int = 3) -> list:
    lines: list = [request_line(f"r{i}") for i in range(1, n + 1)]
    lines[line - 1] = bad
    return lines


def _without(field: str) -> dict:
    line = request_line("r2")
    del line[field]
    return line


CASES = {
    "empty_file": ([], None),
    "invalid_json_line": (_with(2, '{"custom_id": "r2", '), 2),
    "duplicate_custom_id": (_with(3, request_line("r1")), 3),
    "missing_required_field": (_with(2, _without("method")), 2),
    "invalid_method": (_with(2, {**request_line("r2"), "method": "GET"}), 2),
    "invalid_url": (_with(3, {**request_line("r3"), "url": "/v1/embeddings"}), 3),
    "invalid_body": (_with(2, {**request_line("r2"), "body": "hello"}), 2),
    "missing_model": (_with(2, {**request_line("r2"), "body": {"messages": [{"role": "user", "content": "x"}]}}), 2),
    "model_not_found": (_with(3, request_line("r3", model="not-served")), 3),
}


@pytest.mark.parametrize("code", sorted(CASES))
async def test_invalid_input_fails_the_batch_with_code_and_line(code, batch, upstream):
    lines, line = CASES[code]
    batch.write_input(lines)
    assert await run_batch(batch.spec(upstream)) == "failed"
    progress = batch.progress()
    assert progress["status"] == "failed"
    assert progress["failed_at"] is not None
    [error] = progress["errors"]
    assert (error["code"], error["line"]) == (code, line)
    assert error["message"]
    assert upstream.stats()["requests"] == 0
    assert not batch.file_dir("file-out").exists()


async def test_too_many_tasks_reported_on_the_first_line_over_the_limit(batch, upstream):
    line = json.dumps(request_line("r"))
    with open(batch.input_path, "w") as handle:
        for i in range(50_001):
            handle.write(line.replace('"r"', f'"r{i}"', 1) + "\n")
    assert await run_batch(batch.spec(upstream)) == "failed"
    [error] = batch.progress()["errors"]
    assert (error["code"], error["line"]) == ("too_many_tasks", 50_001)
    assert upstream.stats()["requests"] == 0


def test_cli_exits_0_when_validation_fails(batch, upstream):
    """A decided batch (even a failed one) is a successful Job: retrying cannot fix it."""
    batch.write_input([])
    spec_path = batch.write_spec(batch.spec(upstream))
    proc = subprocess.run(
        [sys.executable, "-m", "tuneforge_inference.batch", "--run", str(spec_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert batch.progress()["errors"][0]["code"] == "empty_file"
