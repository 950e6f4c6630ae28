"""The artifact store: one layout over any fsspec filesystem (local path, PVC, S3).

Layout under the root URI (see DESIGN.md section 3):

    <root>/<namespace>/files/<file-id>/content      uploaded or produced bytes
    <root>/<namespace>/files/<file-id>/meta.json    the OpenAI File object
    <root>/<namespace>/fine-tuning/<job>/           progress.json, events.jsonl, ...
    <root>/<namespace>/batches/<batch>/             output.jsonl, errors.jsonl, progress.json

Everything another process reads is written atomically: to a temporary name and then
renamed on filesystems that rename atomically, as one PUT on object stores (which never
expose a partial object).
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tuneforge.config import settings

SUPPORTED_SCHEMES = ("file", "s3", "pvc", "gguf")
OBJECT_STORE_SCHEMES = ("s3",)
COPY_CHUNK = 1024 * 1024
"""Bytes per read when streaming into or out of the store: the memory a copy holds, so
uploads, result publishing and model fetches stay small; s3fs batches its own parts."""


class StoreError(Exception):
    """A URI that cannot be resolved or an object that is missing."""


def resolve_uri(uri: str) -> str:
    """Turns a tuneforge URI into an fsspec URL.

    `pvc://<claim>/<path>` is a path on a PersistentVolumeClaim mounted at
    `<pvc_mount_root>/<claim>`; `gguf://<package>/<file>` is a file shipped inside an
    installed Python package (how the embedded SmolLM2 weights arrive); a bare path is a
    local file.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "file://" + os.path.abspath(uri)
    if scheme == "file":
        return uri
    if scheme == "s3":
        return uri
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        if not claim:
            raise StoreError(f"pvc URI {uri!r} names no claim (expected pvc://<claim>/<path>)")
        return "file://" + str(settings().pvc_mount_root / claim / path)
    if scheme == "gguf":
        package, _, filename = rest.partition("/")
        if not package or not filename:
            raise StoreError(f"gguf URI {uri!r} must be gguf://<python-package>/<file>")
        # find_spec locates the package without importing it: weight-carrying packages
        # often import heavy runtimes (llama.cpp) we neither need nor install.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise StoreError(f"gguf URI {uri!r}: Python package {package!r} is not installed")
        return "file://" + os.path.join(spec.submodule_search_locations[0], filename)
    raise StoreError(f"unsupported URI scheme {scheme!r} in {uri!r}; use one of {SUPPORTED_SCHEMES}")


def is_object_store(uri: str) -> bool:
    """True for URIs no Pod can mount as a directory (s3://): engines that read only local
    paths, like vLLM, need what lives there copied to disk first."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme in OBJECT_STORE_SCHEMES


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path for a tuneforge URI."""
    fs, path = fsspec.core.url_to_fs(resolve_uri(uri))
    return fs, path


class ArtifactStore:
    """The artifact store rooted at one URI, with tuneforge's directory layout."""

    def __init__(self, root: str | None = None) -> None:
        self.root = (root or settings().store_root).rstrip("/")
        self.fs, self.root_path = filesystem(self.root)

    # -- layout ------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """A path inside the store; parts never escape the root."""
        for part in parts:
            if any(segment in ("", ".", "..") for segment in part.split("/")):
                raise StoreError(f"invalid path component {part!r}")
        return posixpath.join(self.root_path, *parts)

    def uri(self, *parts: str) -> str:
        """The tuneforge URI of a path in the store, for handing to another process."""
        return posixpath.join(self.root, *parts)

    def file_dir(self, namespace: str, file_id: str) -> str:
        return self.path(namespace, "files", file_id)

    def fine_tuning_dir(self, namespace: str, job: str) -> str:
        return self.path(namespace, "fine-tuning", job)

    def batch_dir(self, namespace: str, batch: str) -> str:
        return self.path(namespace, "batches", batch)

    # -- reading -----------------------------------------------------------------------

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def open_read(self, path: str) -> IO[bytes]:
        try:
            return self.fs.open(path, "rb")
        except FileNotFoundError as exc:
            raise StoreError(f"no object at {path}") from exc

    def read_bytes(self, path: str) -> bytes:
        with self.open_read(path) as handle:
            return handle.read()

    def read_json(self, path: str, default: Any = None) -> Any:
        """The parsed JSON at path, or `default` when it does not exist (yet)."""
        try:
            return json.loads(self.read_bytes(path))
        except StoreError:
            return default

    def iter_lines(self, path: str) -> Iterator[bytes]:
        """Streams the lines of an object without loading it whole."""
        with self.open_read(path) as handle:
            yield from handle

    def size(self, path: str) -> int:
        return int(self.fs.size(path))

    def listdir(self, path: str) -> list[str]:
        """Names (not paths) directly under a directory; empty when it does not exist."""
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(entry.rstrip("/")) for entry in entries)

    # -- writing -----------------------------------------------------------------------

    @contextmanager
    def open_atomic(self, path: str) -> Iterator[IO[bytes]]:
        """A writable handle whose bytes appear at `path` only when the block succeeds."""
        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as handle:
                    yield handle
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            # Object stores publish an object only when its upload completes.
            with self.fs.open(path, "wb") as handle:
                yield handle

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.open_atomic(path) as handle:
            handle.write(data)

    def write_json(self, path: str, value: Any) -> None:
        self.write_bytes(path, json.dumps(value, indent=1, sort_keys=True).encode() + b"\n")

    def append_line(self, path: str, line: str) -> None:
        """Appends one line. Local files append in place (one write call, so a reader
        never sees half a line); object stores rewrite the object."""
        data = line.rstrip("\n").encode() + b"\n"
        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with open(path, "ab") as handle:
                handle.write(data)
            return
        existing = self.read_bytes(path) if self.exists(path) else b""
        self.write_bytes(path, existing + data)

    def copy_stream(self, source: IO[bytes], path: str, limit: int | None = None) -> int:
        """Copies a stream into the store chunk by chunk; returns the byte count.

        Raises StoreError (and leaves nothing behind) when more than `limit` bytes arrive.
        """
        total = 0
        with self.open_atomic(path) as handle:
            while chunk := source.read(COPY_CHUNK):
                total += len(chunk)
                if limit is not None and total > limit:
                    raise StoreError(f"object exceeds the size limit of {limit} bytes")
                handle.write(chunk)
        return total

    def delete(self, path: str) -> None:
        """Deletes a file or directory tree; a missing one is not an error."""
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def local_path(self, path: str) -> str | None:
        """The on-disk path when the store is local, so tools that want a directory
        (transformers, peft) can read it in place instead of copying."""
        return path if isinstance(self.fs, LocalFileSystem) else None
