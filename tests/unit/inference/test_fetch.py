"""Adapter fetch into the local cache: copy once, verify, refetch on change, clear errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tuneforge_inference.fetch import MANIFEST, FetchError, fetch_adapter, fetch_base_model, verify_manifest


def write_adapter(path: Path, weights: bytes = b"w" * 1000) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (path / "adapter_model.safetensors").write_bytes(weights)
    return path


def test_copies_once_and_reuses(tmp_path: Path):
    source = write_adapter(tmp_path / "src")
    first = fetch_adapter("a", f"file://{source}", tmp_path / "cache")
    assert first != source and (first / "adapter_model.safetensors").read_bytes() == b"w" * 1000
    verify_manifest(first)
    inode = (first / "adapter_model.safetensors").stat().st_ino
    assert fetch_adapter("a", f"file://{source}", tmp_path / "cache") == first
    assert (first / "adapter_model.safetensors").stat().st_ino == inode


def test_a_cache_entry_fetched_as_a_source_is_copied_once_and_reused(tmp_path: Path):
    """The adapter-loader sidecar hands the engine its own cache entry as the path to load;
    the engine's copy of it must be current on the next load (not rebuilt, which another
    replica's engine reading it at that moment would see half gone)."""
    sidecar = fetch_adapter("a", str(write_adapter(tmp_path / "src")), tmp_path / "sidecar-cache")
    engine = fetch_adapter("a", str(sidecar), tmp_path / "engine-cache")
    assert MANIFEST not in json.loads((engine / MANIFEST).read_text())["files"]
    inode = (engine / "adapter_model.safetensors").stat().st_ino
    assert fetch_adapter("a", str(sidecar), tmp_path / "engine-cache") == engine
    assert (engine / "adapter_model.safetensors").stat().st_ino == inode


def test_changed_source_is_fetched_again(tmp_path: Path):
    source = write_adapter(tmp_path / "src")
    fetch_adapter("a", str(source), tmp_path / "cache")
    write_adapter(source, b"v" * 2000)
    again = fetch_adapter("a", str(source), tmp_path / "cache")
    assert (again / "adapter_model.safetensors").read_bytes() == b"v" * 2000


def test_corruption_is_detected_by_checksum(tmp_path: Path):
    entry = fetch_adapter("a", str(write_adapter(tmp_path / "src")), tmp_path / "cache")
    (entry / "adapter_model.safetensors").write_bytes(b"x" * 1000)
    with pytest.raises(FetchError, match="checksum"):
        verify_manifest(entry)


def test_missing_source_names_adapter_and_uri(tmp_path: Path):
    with pytest.raises(FetchError, match=r"adapter 'ghost': source .*nowhere does not exist"):
        fetch_adapter("ghost", str(tmp_path / "nowhere"), tmp_path / "cache")
    with pytest.raises(FetchError, match="pvc URI"):
        fetch_adapter("ghost", "pvc:///x", tmp_path / "cache")


def test_directory_without_adapter_files_is_refused(tmp_path: Path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "README").write_text("not an adapter")
    with pytest.raises(FetchError, match="adapter_config.json"):
        fetch_adapter("a", str(tmp_path / "src"), tmp_path / "cache")


def test_concurrent_fetches_build_one_entry(tmp_path: Path):
    source = write_adapter(tmp_path / "src", b"z" * 5_000_000)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(fetch_adapter("a", str(source), tmp_path / "cache")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 4
    verify_manifest(results[0])
    leftovers = [p.name for p in (tmp_path / "cache" / "adapters").iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    assert json.loads((results[0] / MANIFEST).read_text())["files"]["adapter_model.safetensors"]["size"] == 5_000_000


def test_missing_base_model_is_a_fetch_error(tmp_path: Path):
    with pytest.raises(FetchError, match="base model"):
        fetch_base_model(str(tmp_path / "no-model"), tmp_path / "cache")
