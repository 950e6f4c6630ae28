"""The operator's view of the artifact store: file ids to URIs, and reading JSONL.

A file id (`file-...`) names an upload in the caller's namespace,
`<root>/<namespace>/files/<id>/content`; s3://, pvc:// and file:// references are used
as given.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from tuneforge.storage import ArtifactStore, StoreError, filesystem


@lru_cache(maxsize=1)
def store() -> ArtifactStore:
    return ArtifactStore()


def resolve_file(namespace: str, ref: str) -> str:
    """The store URI of a file reference."""
    if ref.startswith("file-"):
        return store().uri(namespace, "files", ref, "content")
    return ref


def open_lines(uri: str) -> Iterator[bytes]:
    """Streams the lines of the object at `uri`; StoreError when it does not exist."""
    fs, path = filesystem(uri)
    try:
        handle = fs.open(path, "rb")
    except FileNotFoundError as exc:
        raise StoreError(f"no object at {uri}") from exc
    with handle:
        yield from handle
