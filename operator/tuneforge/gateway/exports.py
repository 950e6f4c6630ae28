"""A succeeded job's adapter, or its merged model, downloaded as one tar archive.

The archive holds one directory, `<job>-adapter/` (or `<job>-merged/`), with every file the
trainer published there: what `peft.PeftModel.from_pretrained` (or, for the merged model,
`transformers.AutoModelForCausalLM.from_pretrained`) loads once extracted. Uncompressed tar
because model weights hardly compress, and because every header follows from the store's
listing alone (names and sizes): the response carries its exact Content-Length, so clients
show progress and notice a cut-off download, and it streams member by member in 1 MiB
chunks, so a merged 70B model (~140 GB) passes through the gateway with flat memory.

Headers are POSIX pax: ustar alone cannot hold names over 100 characters or members of
8 GiB and more. The bytes are deterministic (names sorted, the job's finish time as every
member's mtime, no owners), so downloading twice gives the same archive.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneforge import jobfiles
from tuneforge.api.v1alpha1.labels import Label
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.times import unix
from tuneforge.storage import ArtifactStore, StoreError

CHUNK = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
END_OF_ARCHIVE = bytes(2 * BLOCK)
MEDIA_TYPE = "application/x-tar"
TAR_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {MEDIA_TYPE: {}}}}
"""The OpenAPI description of an archive download: bytes, not JSON."""


@dataclass(frozen=True)
class Export:
    """Something a job publishes that can be downloaded: where it is in the job's
    directory, what its archive is called after the job, and its 404 code."""

    directory: str
    suffix: str
    title: str
    missing_code: str


ADAPTER = Export(jobfiles.ADAPTER, "adapter", "adapter", "adapter_not_found")
MERGED = Export(jobfiles.MERGED, "merged", "merged model", "merged_model_not_found")


@dataclass(frozen=True)
class Member:
    """One archive member: its header block(s), and the store path and size of its bytes
    (no path for the directory entry)."""

    header: bytes
    source: str | None = None
    size: int = 0


def tar_header(name: str, *, size: int, mtime: int, directory: bool = False) -> bytes:
    """The pax header of a member: one 512-byte block, preceded by an extended header when
    the name or size do not fit ustar."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = 0 if directory else size
    info.mtime = mtime
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def archive_members(root: str, files: Sequence[tuple[str, str, int]], mtime: int) -> list[Member]:
    """The members of an archive of directory `root`: the directory, then each file
    (relative name, store path, size) under it, by name."""
    members = [Member(tar_header(root, size=0, mtime=mtime, directory=True))]
    for name, source, size in sorted(files):
        members.append(Member(tar_header(f"{root}/{name}", size=size, mtime=mtime), source, size))
    return members


def _padding(size: int) -> int:
    return -size % BLOCK


def archive_size(members: Sequence[Member]) -> int:
    """The archive's exact length in bytes: headers, data padded to whole blocks, the end."""
    return sum(len(m.header) + m.size + _padding(m.size) for m in members) + len(END_OF_ARCHIVE)


def archive_chunks(store: ArtifactStore, members: Sequence[Member]) -> Iterator[bytes]:
    """The archive's bytes, reading each member from the store in CHUNK-sized pieces. A
    member whose size changed since it was listed raises StoreError before the archive's
    bytes disagree with its headers, so the client sees a cut-off download, never a
    wrong one."""
    for member in members:
        yield member.header
        if member.source is None:
            continue
        sent = 0
        with store.open_read(member.source) as handle:
            while chunk := handle.read(CHUNK):
                sent += len(chunk)
                if sent > member.size:
                    break
                yield chunk
        if sent != member.size:
            raise StoreError(f"{member.source} changed while it was being archived")
        yield bytes(_padding(member.size))
    yield END_OF_ARCHIVE


def directory_files(store: ArtifactStore, path: str) -> list[tuple[str, str, int]]:
    """(name relative to `path`, store path, size) of every file under `path`; empty when
    there is no such directory. The path's cached listing is dropped first, as for every
    read of what another process writes (`tuneforge.jobfiles`): the trainer publishes the
    directory, and deleting a model removes it."""
    store.fs.invalidate_cache(path)
    try:
        found = store.retry.call(lambda: store.fs.find(path, detail=True), f"list {path}")
    except FileNotFoundError:
        return []
    prefix = path.rstrip("/") + "/"
    return [(name.removeprefix(prefix), name, int(info["size"]))
            for name, info in found.items() if name.startswith(prefix)]


async def archive_response(store: ArtifactStore, resource: Mapping[str, Any], export: Export, *,
                           param: str) -> StreamingResponse:
    """The download of `export` of a succeeded job (the caller checks the job's state in its
    API's terms). 404 when the job has no such thing: no merged model was asked for, the
    fine-tuned model was deleted, or the store no longer holds it."""
    meta, spec, status = resource["metadata"], resource["spec"], resource.get("status") or {}
    job = meta["name"]
    if export is MERGED and not spec.get("mergeAdapter"):
        raise OpenAIError(404, f"Job '{job}' has no merged model: it was not created with mergeAdapter. "
                          "Download its adapter instead and merge it with peft's merge_and_unload().",
                          param=param, code=export.missing_code)
    if (meta.get("labels") or {}).get(Label.MODEL_DELETED) == "true":
        raise OpenAIError(404, f"The fine-tuned model of job '{job}' was deleted, and its {export.title} with it.",
                          param=param, code=export.missing_code)
    directory = jobfiles.JobFiles.of(store, meta["namespace"], job).path(export.directory)
    files = await run_in_threadpool(directory_files, store, directory)
    if not files:
        raise OpenAIError(404, f"The {export.title} of job '{job}' is not in the artifact store.",
                          param=param, code=export.missing_code)
    root = f"{job}-{export.suffix}"
    members = archive_members(root, files, unix(status.get("finishedAt")) or 0)
    return StreamingResponse(archive_chunks(store, members), media_type=MEDIA_TYPE, headers={
        "content-length": str(archive_size(members)),
        "content-disposition": f'attachment; filename="{root}.tar"',
    })
