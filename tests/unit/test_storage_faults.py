"""The artifact store on S3 behind a proxy that fails a share of requests (503 SlowDown,
429, dropped connections): every operation still succeeds, byte for byte, and only
because of the retries."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid

import pytest
from s3fs import S3FileSystem

from tuneforge.config import settings
from tuneforge.storage import ArtifactStore, RetryPolicy, StoreError, is_transient

from tests.support.faulty_proxy import FaultPlan, FaultyProxy, running

FIFTH = FaultPlan(error_rate=0.2, drop_rate=0.05, seed=7)
MiB = 1024 * 1024


@pytest.fixture
def bucket(s3_endpoint) -> str:
    """A fresh bucket, created directly on the S3 server (not through the proxy)."""
    name = f"faults-{uuid.uuid4().hex[:12]}"
    S3FileSystem(skip_instance_cache=True).mkdir(name)
    return name


@pytest.fixture
def proxy(s3_endpoint, bucket, monkeypatch):
    """The proxy, faults off until a test sets its plan; S3 clients made while it runs
    talk to it (cached s3fs instances would still talk to the server directly)."""
    with running(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        S3FileSystem.clear_instance_cache()
        settings.cache_clear()
        yield proxy
    S3FileSystem.clear_instance_cache()
    settings.cache_clear()


def direct(s3_endpoint: str) -> S3FileSystem:
    return S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)


def test_every_store_operation_survives_a_fifth_of_requests_failing(proxy: FaultyProxy, bucket):
    store = ArtifactStore(f"s3://{bucket}/root")
    proxy.set_plan(FIFTH)
    blob = os.urandom(3 * MiB + 17)
    job = store.fine_tuning_dir("team-a", "ftjob-1")

    store.write_json(f"{job}/progress.json", {"step": 3})
    store.write_bytes(f"{job}/blob.bin", blob)
    for step in range(5):
        store.append_line(f"{job}/metrics.jsonl", json.dumps({"step": step}))
    with store.open_atomic(f"{job}/streamed.bin") as handle:
        for _ in range(4):
            handle.write(blob[: MiB])
    assert store.copy_stream(io.BytesIO(blob), f"{job}/copied.bin") == len(blob)

    assert store.read_json(f"{job}/progress.json") == {"step": 3}
    assert store.read_json(f"{job}/missing.json", default="absent") == "absent"
    assert store.read_bytes(f"{job}/blob.bin") == blob
    assert store.read_bytes(f"{job}/copied.bin") == blob
    assert store.size(f"{job}/streamed.bin") == 4 * MiB
    assert [json.loads(line)["step"] for line in store.iter_lines(f"{job}/metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert store.exists(f"{job}/blob.bin") and not store.exists(f"{job}/nothing")
    assert store.listdir(job) == ["blob.bin", "copied.bin", "metrics.jsonl", "progress.json", "streamed.bin"]
    store.delete(job)
    assert store.listdir(job) == [] and not store.exists(f"{job}/blob.bin")

    assert proxy.faults > 0, "the proxy injected faults"
    assert {"GET", "PUT", "HEAD"} <= set(proxy.faulted), f"reads, writes and lookups failed: {proxy.faulted}"


def test_multipart_uploads_and_range_reads_pass_through_byte_exact(proxy: FaultyProxy, bucket, s3_endpoint):
    store = ArtifactStore(f"s3://{bucket}")
    proxy.set_plan(FIFTH)
    data = os.urandom(11 * MiB)
    with store.fs.open(f"{bucket}/big.bin", "wb", block_size=5 * MiB) as handle:
        for offset in range(0, len(data), MiB):
            handle.write(data[offset:offset + MiB])

    through_proxy = store.fs.info(f"{bucket}/big.bin", refresh=True)
    at_server = direct(s3_endpoint).info(f"{bucket}/big.bin")
    assert through_proxy["ETag"] == at_server["ETag"] and at_server["ETag"].endswith('-3"'), "three parts"
    assert through_proxy["size"] == len(data)
    assert direct(s3_endpoint).cat_file(f"{bucket}/big.bin") == data
    start, end = 5 * MiB - 3, 6 * MiB + 5  # across the boundary of two parts
    assert store.fs.cat_file(f"{bucket}/big.bin", start=start, end=end) == data[start:end]
    assert proxy.faults > 0


def test_without_retries_the_same_faults_fail_operations(proxy: FaultyProxy, bucket, monkeypatch):
    """The control experiment: with the retries off, the proxy's faults surface."""
    monkeypatch.setenv("TUNEFORGE_STORE_RETRY_ATTEMPTS", "1")
    monkeypatch.setenv("TUNEFORGE_STORE_RETRY_DEADLINE_S", "0")
    settings.cache_clear()
    store = ArtifactStore(f"s3://{bucket}")
    proxy.set_plan(FaultPlan(every=2))
    with pytest.raises(Exception) as failure:  # noqa: PT011 - whichever fault hits first
        for n in range(4):
            store.write_bytes(store.path(f"k{n}"), b"x")
            store.read_bytes(store.path(f"k{n}"))
    assert is_transient(failure.value), failure.value
    assert proxy.faults >= 1


def test_the_client_retries_throttling_botocore_does_not_recognise(proxy: FaultyProxy, bucket, monkeypatch):
    """botocore's standard mode retries 5xx and known throttling codes, not a 429 with
    another code, and s3fs only SlowDown; s3fs's hook retries it for every caller of the
    filesystem, including those (the trainer's checkpoints, weights) that bypass the store."""
    monkeypatch.setenv("TUNEFORGE_STORE_RETRY_DEADLINE_S", "0")
    settings.cache_clear()
    store = ArtifactStore(f"s3://{bucket}")
    proxy.set_plan(FaultPlan(error_rate=0.3, seed=3, status=429, code="TooManyRequests",
                             message="Too many requests"))
    for n in range(8):
        store.fs.pipe_file(store.path(f"n{n}"), b"%d" % n)
        assert store.fs.cat_file(store.path(f"n{n}")) == b"%d" % n
    assert proxy.faults > 0


def test_the_store_rides_out_faults_the_client_gave_up_on(proxy: FaultyProxy, bucket, monkeypatch, caplog):
    """The outer layer alone: with the client retrying nothing, whole store operations
    are retried with backoff."""
    monkeypatch.setenv("TUNEFORGE_STORE_RETRY_ATTEMPTS", "1")
    settings.cache_clear()
    store = ArtifactStore(f"s3://{bucket}")
    store.retry = RetryPolicy(deadline_s=30.0, base_s=0.01, max_s=0.1)
    proxy.set_plan(FaultPlan(error_rate=0.2, drop_rate=0.1, seed=5))
    with caplog.at_level(logging.WARNING, logger="tuneforge.storage"):
        for n in range(6):
            store.append_line(store.path("log.jsonl"), json.dumps({"n": n}))
            assert store.exists(store.path("log.jsonl"))
    assert [json.loads(line)["n"] for line in store.iter_lines(store.path("log.jsonl"))] == list(range(6))
    assert proxy.faults > 0
    assert any("failed transiently" in message for message in caplog.messages)


def test_an_upload_abandoned_midway_publishes_nothing(proxy: FaultyProxy, bucket):
    store = ArtifactStore(f"s3://{bucket}")
    proxy.set_plan(FIFTH)
    with pytest.raises(StoreError, match="size limit"):
        store.copy_stream(io.BytesIO(b"x" * (2 * MiB)), store.path("too-big"), limit=MiB)
    with pytest.raises(RuntimeError):
        with store.open_atomic(store.path("crashed")) as handle:
            handle.write(b"half")
            raise RuntimeError("crash mid-write")
    assert not store.exists(store.path("too-big")) and not store.exists(store.path("crashed"))
