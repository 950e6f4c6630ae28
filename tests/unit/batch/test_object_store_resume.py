"""A batch on `s3://` storage survives the loss of its Pod: the runner's journal lives on
the Pod's disk, so the runner copies it into the object store as it goes, and a runner in
a new Pod (an empty local disk) resumes from that copy instead of sending every request
again, still ending with exactly one line per custom_id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import fsspec

from tests.support.batches import request_line
from tests.support.s3 import new_bucket

N = 200


def _lines(fs, path: str) -> list[dict]:
    fs.invalidate_cache()
    return [json.loads(line) for line in fs.cat_file(path).decode().splitlines()] if fs.exists(path) else []


def test_a_new_pod_resumes_from_the_journal_in_the_object_store(batch, upstream, s3_endpoint, tmp_path):
    fs = fsspec.filesystem("s3")
    bucket = new_bucket("tuneforge-batch-resume")
    ids = [f"req-{i:04d}" for i in range(N)]
    batch.write_input([request_line(i, f"content of {i}") for i in ids])
    fs.put_file(str(batch.input_path), f"{bucket}/input.jsonl")
    out = f"{bucket}/team-a/batches/{batch.batch_id}"
    spec = batch.spec(upstream, input_uri=f"{bucket}/input.jsonl", output_uri=out, store_root=bucket,
                      concurrency=4, journal_snapshot_s=0.3)
    command = [sys.executable, "-m", "tuneforge_inference.batch", "--run", str(batch.write_spec(spec))]
    upstream.app.config.latency_s = 0.05

    first_pod = subprocess.Popen(command, env={**os.environ, "TUNEFORGE_CACHE_DIR": str(tmp_path / "pod-1")},
                                 stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_lines(fs, f"{out}/journal/output.jsonl")) < 40:
        assert first_pod.poll() is None, first_pod.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no journal snapshot reached the object store"
        time.sleep(0.1)
    first_pod.send_signal(signal.SIGKILL)
    first_pod.wait()
    in_snapshot = {line["custom_id"] for line in _lines(fs, f"{out}/journal/output.jsonl")}
    assert 40 <= len(in_snapshot) < N
    sent_before = upstream.stats()["requests"]

    upstream.app.config.latency_s = 0.0
    second_pod = subprocess.run(command, env={**os.environ, "TUNEFORGE_CACHE_DIR": str(tmp_path / "pod-2")},
                                capture_output=True, timeout=120)
    assert second_pod.returncode == 0, second_pod.stderr.decode()[-2000:]

    assert upstream.stats()["requests"] - sent_before <= N - len(in_snapshot), "journaled requests were sent again"
    output = _lines(fs, f"{out}/output.jsonl")
    assert Counter(line["custom_id"] for line in output) == Counter(ids)
    progress = json.loads(fs.cat_file(f"{out}/progress.json"))
    assert progress["status"] == "completed"
    assert progress["request_counts"] == {"total": N, "completed": N, "failed": 0}
    registered = _lines(fs, f"{bucket}/team-a/files/{spec.output_file_id}/content")
    assert len(registered) == N, "the output File the gateway serves holds every line"
