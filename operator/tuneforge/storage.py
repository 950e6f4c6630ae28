"""The artifact store: one layout over any fsspec filesystem (local path, PVC, S3).

Layout under the root URI (see docs/architecture.md):

    <root>/<namespace>/files/<file-id>/content      uploaded or produced bytes
    <root>/<namespace>/files/<file-id>/meta.json    the OpenAI File object
    <root>/<namespace>/fine-tuning/<job>/           progress.json, events.jsonl, ...
    <root>/<namespace>/batches/<batch>/             output.jsonl, errors.jsonl, progress.json

Everything another process reads is written atomically: to a temporary name and then
renamed on filesystems that rename atomically, as one PUT on object stores (which never
expose a partial object).

Object stores fail transiently (503 SlowDown, 5xx, reset connections, timeouts), and a
fault must not fail a job that has trained for hours. Two layers absorb them:

- every S3 request is retried by the client itself, with backoff and jitter: botocore's
  retry modes, then s3fs's retries (which also resume interrupted downloads) of whatever
  `is_transient` accepts, configured from the `store_retry_*` settings in `filesystem()`,
  so every caller of `filesystem()` (the trainer's data and weight loading too) gets them;
- an `ArtifactStore` operation that still fails transiently once the client gave up (an
  outage longer than its retries, a 429 botocore does not count as throttling) is
  retried whole by `RetryPolicy` until `store_retry_deadline_s`. Multi-step operations
  retry step by step, so a retry never repeats a step whose effect already happened.
  Permanent errors (a missing object, a denied or malformed request) raise at once.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import posixpath
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tuneforge.config import settings

SUPPORTED_SCHEMES = ("file", "s3", "pvc", "gguf")
OBJECT_STORE_SCHEMES = ("s3",)
COPY_CHUNK = 1024 * 1024
"""Bytes per read when streaming into or out of the store: the memory a copy holds, so
uploads, result publishing and model fetches stay small; s3fs batches its own parts."""

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying: timeouts, throttling and server-side failures."""
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "RequestTimeout", "InternalError", "ServiceUnavailable",
})
"""S3 error codes worth retrying. RequestTimeout comes with status 400, hence codes too."""
TRANSIENT_ERRNOS = frozenset({errno.EBUSY, errno.EAGAIN, getattr(errno, "EREMOTEIO", errno.EIO)})
"""What s3fs turns SlowDown/503 (EBUSY) and InternalError/500 (EREMOTEIO) into, for when
it raises without the botocore error attached. (Resets and timeouts have their own
OSError subclasses, ConnectionError and TimeoutError.)"""
TRANSIENT_CLASSES = frozenset({
    "botocore.exceptions.HTTPClientError",  # connection closed, read timeout, ...
    "botocore.exceptions.ConnectionError",  # endpoint unreachable, connect timeout
    "botocore.parsers.ResponseParserError",  # throttling answers with broken XML (s3fs #484)
    "aiohttp.client_exceptions.ClientPayloadError",  # a body cut off mid-stream
    "aiohttp.client_exceptions.ClientConnectionError",  # server disconnected, reset
    "http.client.IncompleteRead",
})
"""Client-library exceptions that mean the connection, not the request, failed. Matched by
name along the class hierarchy so that classifying an error imports nothing (aiohttp
alone takes half a second to import)."""
PERMANENT_TYPES = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


class StoreError(Exception):
    """A URI that cannot be resolved or an object that is missing."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it was raised from: s3fs wraps botocore's error (which
    carries the HTTP status) in an OSError. Only explicit causes count: an error raised
    while handling a transient one (a bug in a handler) is not transient itself."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def _http_error(exc: BaseException) -> tuple[int | None, str | None]:
    """(status, S3 error code) of a botocore ClientError; (None, None) for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None, None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status, response.get("Error", {}).get("Code")


def _is_transient_class(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return any(f"{cls.__module__}.{cls.__qualname__}" in TRANSIENT_CLASSES for cls in type(exc).__mro__)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the operation that raised `exc` may succeed.

    A missing object, a denied request or a malformed one fails the same way every time,
    so those are permanent even when a transient error hides further down the chain.
    """
    for link in _causes(exc):
        if isinstance(link, (*PERMANENT_TYPES, StoreError)):
            return False
        if _is_transient_class(link):
            return True
        status, code = _http_error(link)
        if status is not None or code is not None:
            return status in TRANSIENT_STATUSES or code in TRANSIENT_CODES
        if isinstance(link, OSError) and link.errno in TRANSIENT_ERRNOS:
            return True
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """Retries a whole store operation on transient faults, with exponential backoff and
    jitter, until `deadline_s` has passed since its first try.

    This is the outer layer: the S3 client has already retried each request, so what
    reaches it is an outage or a fault the client does not retry. Jitter keeps the trainer
    and the gateway from retrying in lockstep against a throttled store; "equal jitter"
    (half the backoff fixed, half random) still guarantees the store a pause.
    """

    deadline_s: float = 120.0
    base_s: float = 0.5
    max_s: float = 15.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random

    @classmethod
    def from_settings(cls) -> "RetryPolicy":
        return cls(deadline_s=settings().store_retry_deadline_s)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 for the first)."""
        backoff = min(self.max_s, self.base_s * 2**retry)
        return backoff / 2 + self.rand() * backoff / 2

    def call(self, operation: Callable[[], T], what: str) -> T:
        """`operation()`, retried while it fails transiently and time remains."""
        start = self.clock()
        retry = 0
        while True:
            try:
                return operation()
            except Exception as exc:
                delay = self.delay(retry)
                if not is_transient(exc) or self.clock() - start + delay > self.deadline_s:
                    raise
                log.warning("store: %s failed transiently (%s: %s); retry %d in %.1f s",
                            what, type(exc).__name__, exc, retry + 1, delay)
            self.sleep(delay)
            retry += 1


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
    """The fsspec filesystem and in-filesystem path for a tuneforge URI; S3 clients retry
    transient faults as the `store_retry_*` settings say."""
    url = resolve_uri(uri)
    if not url.startswith("s3://"):
        return fsspec.core.url_to_fs(url)
    config = settings()
    retries = {"total_max_attempts": config.store_retry_attempts, "mode": config.store_retry_mode}
    fs, path = fsspec.core.url_to_fs(url, config_kwargs={"retries": retries})
    # s3fs takes its own retry count (SlowDown once botocore gave up, interrupted
    # downloads) only as an attribute; fsspec shares the instance among equal options.
    fs.retries = config.store_retry_attempts
    # Beyond SlowDown, s3fs retries only what this process-wide hook accepts: without it a
    # 429 or an unreachable endpoint would fail at once once botocore gave up.
    import s3fs  # here: importing it (aiobotocore, aiohttp) costs half a second

    s3fs.set_custom_error_handler(is_transient)
    return fs, path


def _abandon(handle: IO[bytes]) -> None:
    """Drops an unfinished upload. Closing (what leaving a `with fs.open(...)` block does,
    error or not) would publish the bytes written so far; fsspec would also close, and so
    publish, a handle left open when it is garbage-collected."""
    handle.discard()
    handle.closed = True


class ArtifactStore:
    """The artifact store rooted at one URI, with tuneforge's directory layout."""

    def __init__(self, root: str | None = None) -> None:
        self.root = (root or settings().store_root).rstrip("/")
        self.fs, self.root_path = filesystem(self.root)
        self.retry = RetryPolicy.from_settings()

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
        return self.retry.call(lambda: self.fs.exists(path), f"exists {path}")

    def open_read(self, path: str) -> IO[bytes]:
        """A readable handle; opening is retried, reads of an object store's handle are
        retried by s3fs (each block is a ranged GET)."""
        return self.retry.call(lambda: self._open(path), f"open {path}")

    def _open(self, path: str) -> IO[bytes]:
        try:
            return self.fs.open(path, "rb")
        except FileNotFoundError as exc:
            raise StoreError(f"no object at {path}") from exc

    def read_bytes(self, path: str) -> bytes:
        return self.retry.call(lambda: self._read_all(path), f"read {path}")

    def _read_all(self, path: str) -> bytes:
        with self._open(path) as handle:
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
        return int(self.retry.call(lambda: self.fs.size(path), f"size {path}"))

    def modified(self, path: str) -> float:
        """When the object at `path` was last written, in seconds since the epoch."""
        return self.retry.call(lambda: self.fs.modified(path).timestamp(), f"modified {path}")

    def listdir(self, path: str) -> list[str]:
        """Names (not paths) directly under a directory; empty when it does not exist."""
        entries = self.retry.call(lambda: self._ls(path), f"list {path}")
        return sorted(posixpath.basename(entry.rstrip("/")) for entry in entries)

    def _ls(self, path: str) -> list[str]:
        try:
            return self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []

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
            # Object stores publish an object only when its upload completes; s3fs and
            # botocore retry each request of the upload (the caller's block cannot be replayed).
            handle = self.fs.open(path, "wb")
            try:
                yield handle
            except BaseException:
                _abandon(handle)
                raise
            handle.close()

    def write_bytes(self, path: str, data: bytes) -> None:
        """Writes an object atomically; retried whole, as writing the same bytes twice is harmless."""
        self.retry.call(lambda: self._write_once(path, data), f"write {path}")

    def _write_once(self, path: str, data: bytes) -> None:
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
        # Read and write are retried separately: retrying the pair could append twice when
        # a write succeeded but its answer was lost.
        try:
            existing = self.read_bytes(path)
        except StoreError:
            existing = b""
        self.write_bytes(path, existing + data)

    def copy_stream(self, source: IO[bytes], path: str, limit: int | None = None) -> int:
        """Copies a stream into the store chunk by chunk; returns the byte count.

        Raises StoreError (and leaves nothing behind) when more than `limit` bytes arrive.
        Only the client retries requests here: a consumed source stream cannot be replayed.
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
        self.retry.call(lambda: self._rm(path), f"delete {path}")

    def _rm(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def local_path(self, path: str) -> str | None:
        """The on-disk path when the store is local, so tools that want a directory
        (transformers, peft) can read it in place instead of copying."""
        return path if isinstance(self.fs, LocalFileSystem) else None
