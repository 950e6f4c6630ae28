"""Copies adapters (and, through the ground floor, base models) into a local cache.

Engines want local directories: vLLM takes `--lora-modules name=path` and peft reads a
folder. Sources live in the artifact store (file://, pvc://, s3://), so every adapter is
copied once into `<cache_dir>/adapters/<hash of uri>/` and reused while the source is
unchanged.

Several server processes can start on one node at the same time and share the cache (a
hostPath or an emptyDir shared by containers), so each entry is built under an exclusive
file lock, in a temporary directory renamed into place only after every file has been
copied with the byte count the source listed and a sha256 recorded in a manifest. A reader
re-lists the source (cheap) and refetches when sizes differ, so a replaced adapter is
never served stale.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneforge.config import settings
from tuneforge.storage import COPY_CHUNK, StoreError, filesystem
from tuneforge.weights import materialize_base_model

MANIFEST = ".tuneforge-manifest.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class FetchError(Exception):
    """A source that is missing, unreadable, or not what it claims to be."""


@contextmanager
def cache_lock(lock_path: Path) -> Iterator[None]:
    """Holds an exclusive advisory lock on `lock_path` (created if needed)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _cache_root(cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else settings().cache_dir


def _source_listing(uri: str, what: str) -> tuple[object, str, dict[str, int]]:
    """The filesystem, root path and {relative path: size} of every file under `uri`."""
    try:
        fs, root = filesystem(uri)
        if not fs.exists(root):
            raise FetchError(f"{what}: source {uri} does not exist")
        if not fs.isdir(root):
            raise FetchError(f"{what}: source {uri} is a file, expected a directory")
        found = fs.find(root, detail=True)
    except StoreError as exc:
        raise FetchError(f"{what}: {exc}") from exc
    except (OSError, PermissionError) as exc:
        raise FetchError(f"{what}: cannot read {uri}: {exc}") from exc
    root = root.rstrip("/")
    # A source may itself be a cache entry (the adapter-loader sidecar hands the engine its
    # copy): its manifest is not part of the adapter, and copying it would make every later
    # copy look stale, since the new entry's own manifest replaces it.
    listing = {
        rel: int(info["size"])
        for path, info in found.items()
        if info.get("type") == "file" and (rel := posixpath.relpath(path, root)) != MANIFEST
    }
    if not listing:
        raise FetchError(f"{what}: source {uri} is an empty directory")
    return fs, root, listing


def _copy_verified(fs, source: str, dest: Path, expected_size: int) -> str:
    """Streams one file, checking its size; returns its sha256."""
    digest = hashlib.sha256()
    copied = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with fs.open(source, "rb") as src, open(dest, "wb") as out:
        while chunk := src.read(COPY_CHUNK):
            digest.update(chunk)
            copied += len(chunk)
            out.write(chunk)
    if copied != expected_size:
        raise FetchError(f"{source}: copied {copied} bytes but the source listed {expected_size}")
    return digest.hexdigest()


def _cached_is_current(entry: Path, uri: str, listing: dict[str, int]) -> bool:
    """True when `entry` was built from `uri` with the same files and sizes, all present."""
    manifest_path = entry / MANIFEST
    if not manifest_path.is_file():
        return False
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("uri") != uri or {k: v["size"] for k, v in manifest["files"].items()} != listing:
        return False
    return all((entry / rel).is_file() and (entry / rel).stat().st_size == size for rel, size in listing.items())


def verify_manifest(entry: Path) -> None:
    """Recomputes every checksum of a cache entry; raises FetchError on a mismatch.

    Not run on every start (that would re-read every byte); used when a corrupted cache is
    suspected and by the tests.
    """
    manifest = json.loads((entry / MANIFEST).read_text())
    for rel, info in manifest["files"].items():
        digest = hashlib.sha256((entry / rel).read_bytes()).hexdigest()
        if digest != info["sha256"]:
            raise FetchError(f"{entry / rel}: checksum mismatch (cache corrupted)")


def fetch_tree(uri: str, kind: str, what: str, cache_dir: Path | None = None) -> Path:
    """Copies the directory at `uri` into `<cache>/<kind>/<hash>/` once; returns that path."""
    fs, root, listing = _source_listing(uri, what)
    key = hashlib.sha256(uri.encode()).hexdigest()[:32]
    base = _cache_root(cache_dir) / kind
    entry = base / key
    with cache_lock(base / f"{key}.lock"):
        if _cached_is_current(entry, uri, listing):
            return entry
        staging = base / f"{key}.tmp-{uuid.uuid4().hex}"
        try:
            files = {
                rel: {"size": size, "sha256": _copy_verified(fs, f"{root}/{rel}", staging / rel, size)}
                for rel, size in listing.items()
            }
            (staging / MANIFEST).write_text(json.dumps({"uri": uri, "files": files}, indent=1))
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(staging, entry)
        except FileNotFoundError as exc:
            raise FetchError(f"{what}: source {uri} changed while it was copied: {exc}") from exc
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return entry


def check_adapter_dir(path: Path, name: str) -> None:
    """Raises FetchError unless `path` looks like a peft LoRA adapter directory."""
    if not (path / ADAPTER_CONFIG).is_file():
        raise FetchError(f"adapter {name!r}: {path} has no {ADAPTER_CONFIG}")
    if not any((path / weights).is_file() for weights in ADAPTER_WEIGHTS):
        raise FetchError(f"adapter {name!r}: {path} has none of {', '.join(ADAPTER_WEIGHTS)}")


def fetch_adapter(name: str, uri: str, cache_dir: Path | None = None) -> Path:
    """The local directory of adapter `name` from `uri` (a store URI or a local path)."""
    path = fetch_tree(uri, "adapters", f"adapter {name!r}", cache_dir)
    check_adapter_dir(path, name)
    return path


def fetch_base_model(uri: str, cache_dir: Path | None = None) -> Path:
    """The local HF directory of the base model. The ground floor's helper does the
    work (in place for local directories, copied from S3, GGUF dequantized once) under
    its own per-entry lock; this only puts its entries next to the adapters."""
    try:
        return materialize_base_model(uri, cache_dir=_cache_root(cache_dir) / "models")
    except StoreError as exc:
        raise FetchError(f"base model: {exc}") from exc
