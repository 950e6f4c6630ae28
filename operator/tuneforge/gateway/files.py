"""/v1/files: uploads go straight to the artifact store, validated on arrival.

A file is `<store>/<ns>/files/<id>/` holding `content`, `validation.json` (the dataset
error with its code, param and line, when validation failed) and `meta.json` (the OpenAI
File object), written in that order, so a file whose meta.json exists is complete.

A gateway killed mid-upload (or mid-delete) leaves a directory without meta.json: never
listed, but holding up to the whole upload. A retry under the same Idempotency-Key lands
in that directory and starts by emptying it; a directory nobody retries is deleted by
`sweep_abandoned_uploads` once nothing was written to it for ABANDONED_UPLOAD_SECONDS,
far longer than copying and validating even the largest upload takes.

The multipart body is parsed by Starlette, which spools file parts to a temporary file
beyond 1 MB, so memory stays flat whatever the upload size. The limit depends on the
purpose (`GatewaySettings.upload_limit`: batch input files may be larger than training
files), which the form names only once it is parsed: the Content-Length is checked against
the largest limit before a byte is read, the spooled size against the purpose's before
anything is copied, and the copy into the store enforces it again.

Besides uploads, the files API serves each fine-tuning job's results.csv in place, as a
File of purpose `fine-tune-results` (`result_files`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Iterator

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from tuneforge import datasets
from tuneforge.gateway import result_files
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.errors import OpenAIError, bad_request, not_found
from tuneforge.gateway.ids import derived_id, new_id
from tuneforge.gateway.openai_protocol import CursorPage, DeletedFile, FileLimit, FileObject
from tuneforge.gateway.pagination import page
from tuneforge.gateway.settings import gateway_settings
from tuneforge.storage import ArtifactStore, StoreError

router = APIRouter(tags=["files"])

UPLOAD_PURPOSES = ("fine-tune", "batch")
FILE_ID = re.compile(r"^file-[a-z0-9]{8,64}$")
_MULTIPART_OVERHEAD = 64 * 1024
ABANDONED_UPLOAD_SECONDS = 3600.0

log = logging.getLogger(__name__)

_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)},
                    },
                }
            }
        },
    }
}


def file_meta(store: ArtifactStore, namespace: str, file_id: str) -> FileObject | None:
    """The File object of `file_id` in `namespace`, or None (also for malformed ids)."""
    if not FILE_ID.match(file_id):
        return None
    meta = store.read_json(store.path(namespace, "files", file_id, "meta.json"))
    return None if meta is None else FileObject.model_validate(meta)


def validation_error(store: ArtifactStore, namespace: str, file_id: str) -> dict | None:
    """The dataset error recorded at upload ({code, message, param, line}), if any."""
    return store.read_json(store.path(namespace, "files", file_id, "validation.json"))


async def _existing(request: Request, principal: Principal, file_id: str) -> FileObject:
    """The caller's upload `file_id`, or the results File of one of its jobs (result_files)."""
    store: ArtifactStore = request.app.state.store
    meta = await run_in_threadpool(file_meta, store, principal.tenant, file_id)
    if meta is None:
        meta = await result_files.find(request.app.state.kube, store, principal.tenant, file_id)
    if meta is None:
        raise not_found("file", file_id, param="file_id")
    return meta


def _too_large(purpose: str | None, limit: int) -> OpenAIError:
    what = f"Files with purpose '{purpose}'" if purpose else "Uploads"
    return OpenAIError(413, f"{what} may be at most {limit} bytes.", param="file", code="file_too_large")


def _store_upload(store: ArtifactStore, namespace: str, file_id: str, upload: UploadFile,
                  purpose: str) -> FileObject:
    """Copies, validates and registers one upload (blocking; runs in the threadpool)."""
    directory = store.file_dir(namespace, file_id)
    content = f"{directory}/content"
    limit = gateway_settings().upload_limit(purpose)
    if upload.size is not None and upload.size > limit:
        raise _too_large(purpose, limit)
    store.delete(directory)  # empties what an earlier attempt under the same Idempotency-Key left
    try:
        size = store.copy_stream(upload.file, content, limit=limit)
    except StoreError as exc:
        raise _too_large(purpose, limit) from exc
    status, details = "processed", None
    try:
        summary = datasets.validate_file(purpose, store.iter_lines(content))
        if isinstance(summary, datasets.FineTuneFileSummary):  # what cost estimates measure
            store.write_json(f"{directory}/summary.json", dataclasses.asdict(summary))
    except datasets.DatasetError as exc:
        status, details = "error", exc.message
        store.write_json(f"{directory}/validation.json",
                         {"code": exc.code, "message": exc.message, "param": exc.param, "line": exc.line})
    meta = FileObject(id=file_id, bytes=size, created_at=int(time.time()), filename=upload.filename or "upload.jsonl",
                      purpose=purpose, status=status, status_details=details)
    store.write_json(f"{directory}/meta.json", meta.model_dump())
    return meta


@router.post("/files", response_model=FileObject, openapi_extra=_UPLOAD_SCHEMA, summary="Upload a file")
async def upload_file(
    request: Request,
    principal: Principal = Depends(require("files:write")),
    idempotency_key: str | None = Header(default=None),
) -> FileObject:
    limit = gateway_settings().max_upload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + _MULTIPART_OVERHEAD:
        raise _too_large(None, limit)
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # Starlette raises several types for malformed multipart bodies.
        raise bad_request(f"The body must be multipart/form-data with 'file' and 'purpose': {exc}",
                          param="file", code="invalid_multipart") from exc
    try:
        purpose, upload = form.get("purpose"), form.get("file")
        if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
            raise bad_request(f"Invalid purpose {purpose!r}; use one of {', '.join(UPLOAD_PURPOSES)}.",
                              param="purpose", code="invalid_purpose")
        if not isinstance(upload, UploadFile):
            raise bad_request("The 'file' part is missing.", param="file", code="missing_required_parameter")
        store: ArtifactStore = request.app.state.store
        file_id = derived_id("file", principal.tenant, idempotency_key) if idempotency_key else new_id("file")
        if idempotency_key and (meta := await run_in_threadpool(file_meta, store, principal.tenant, file_id)):
            return meta
        return await run_in_threadpool(_store_upload, store, principal.tenant, file_id, upload, purpose)
    finally:
        await form.close()


def sweep_abandoned_uploads(store: ArtifactStore, idle_s: float = ABANDONED_UPLOAD_SECONDS) -> list[str]:
    """Deletes the file directories of every namespace that no upload will publish: no
    meta.json, and no object in them written for `idle_s`. Returns what it deleted."""
    cutoff = time.time() - idle_s
    swept = []
    for namespace in store.listdir(store.root_path):
        files = store.path(namespace, "files")
        for name in store.listdir(files):
            directory = f"{files}/{name}"
            entries = store.listdir(directory)
            if "meta.json" in entries:
                continue
            try:
                written = max((store.modified(f"{directory}/{entry}") for entry in entries), default=0.0)
            except FileNotFoundError:
                continue  # an upload under way just renamed its temporary content
            if written < cutoff:
                store.delete(directory)
                swept.append(directory)
    return swept


async def sweep_abandoned_uploads_forever(store: ArtifactStore, every_s: float = ABANDONED_UPLOAD_SECONDS) -> None:
    """Sweeps at start (a restarted gateway cleans up after the one killed before it) and
    then every `every_s`, so an abandoned upload is gone within twice ABANDONED_UPLOAD_SECONDS."""
    while True:
        try:
            for directory in await run_in_threadpool(sweep_abandoned_uploads, store):
                log.info("deleted the abandoned upload %s", directory)
        except Exception:
            log.exception("sweeping abandoned uploads failed; next sweep in %.0f s", every_s)
        await asyncio.sleep(every_s)


def _all_files(store: ArtifactStore, namespace: str) -> list[FileObject]:
    metas = (file_meta(store, namespace, name) for name in store.listdir(store.path(namespace, "files")))
    return [meta for meta in metas if meta is not None]


def files_named(store: ArtifactStore, namespace: str, filename: str, purpose: str) -> list[FileObject]:
    """The tenant's uploads of `purpose` called `filename`, oldest first: how the
    management API lets a job name its dataset by the name it was uploaded under."""
    named = [meta for meta in _all_files(store, namespace) if meta.filename == filename and meta.purpose == purpose]
    return sorted(named, key=lambda meta: (meta.created_at, meta.id))


def fine_tune_summary(store: ArtifactStore, namespace: str, file_id: str) -> datasets.FineTuneFileSummary | None:
    """What validation counted in a processed fine-tuning upload (examples, characters):
    recorded at upload, or counted again for files uploaded before it was recorded."""
    directory = store.file_dir(namespace, file_id)
    recorded = store.read_json(f"{directory}/summary.json")
    if recorded is not None:
        return datasets.FineTuneFileSummary(**recorded)
    try:
        summary = datasets.validate_fine_tune_file(store.iter_lines(f"{directory}/content"))
    except (datasets.DatasetError, StoreError):
        return None
    store.write_json(f"{directory}/summary.json", dataclasses.asdict(summary))
    return summary


@router.get("/files", response_model=CursorPage[FileObject], summary="List files")
async def list_files(
    request: Request,
    principal: Principal = Depends(require("files:read")),
    purpose: str | None = None,
    limit: FileLimit = 10_000,
    order: str = Query(default="desc", pattern="^(asc|desc)$"),
    after: str | None = None,
) -> CursorPage:
    store: ArtifactStore = request.app.state.store
    files = await run_in_threadpool(_all_files, store, principal.tenant)
    if purpose in (None, "", result_files.PURPOSE):
        files += await result_files.list_all(request.app.state.listing, store, principal.tenant)
    if purpose:
        files = [meta for meta in files if meta.purpose == purpose]
    files.sort(key=lambda meta: (meta.created_at, meta.id), reverse=order == "desc")
    return page(files, after=after, limit=limit)


@router.get("/files/{file_id}", response_model=FileObject, summary="Retrieve a file")
async def retrieve_file(file_id: str, request: Request,
                        principal: Principal = Depends(require("files:read"))) -> FileObject:
    return await _existing(request, principal, file_id)


@router.delete("/files/{file_id}", response_model=DeletedFile, summary="Delete a file")
async def delete_file(file_id: str, request: Request,
                      principal: Principal = Depends(require("files:write"))) -> DeletedFile:
    store: ArtifactStore = request.app.state.store
    meta = await _existing(request, principal, file_id)
    if meta.purpose == result_files.PURPOSE:
        await run_in_threadpool(result_files.delete, store, principal.tenant, file_id)
        return DeletedFile(id=file_id)
    # meta.json goes first: from then on the file is gone for every reader.
    await run_in_threadpool(store.delete, store.path(principal.tenant, "files", file_id, "meta.json"))
    await run_in_threadpool(store.delete, store.file_dir(principal.tenant, file_id))
    return DeletedFile(id=file_id)


@router.get("/files/{file_id}/content", summary="Download a file's content",
            response_class=StreamingResponse, responses={200: {"content": {"application/octet-stream": {}}}})
async def file_content(file_id: str, request: Request, principal: Principal = Depends(require("files:read"))):
    """The file's bytes as stored, streamed: not JSON, so there is no response model."""
    store: ArtifactStore = request.app.state.store
    meta = await _existing(request, principal, file_id)
    if meta.purpose == result_files.PURPOSE:
        path = result_files.content_path(store, principal.tenant, file_id)
    else:
        path = store.path(principal.tenant, "files", file_id, "content")

    def chunks() -> Iterator[bytes]:
        with store.open_read(path) as handle:
            while chunk := handle.read(1024 * 1024):
                yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers={
        "content-length": str(meta.bytes),
        "content-disposition": f'attachment; filename="{meta.filename}"'.encode("latin-1", "replace").decode("latin-1"),
    })
