"""A fine-tuning job's results.csv as a File of purpose `fine-tune-results`.

The trainer writes results.csv into the job's directory (`tuneforge.jobfiles`) and the
controller records in `status.resultFiles` that it did. The files API serves it in place,
under an id derived from the job, `file-results-<job>`: nothing is copied, no store path
reaches the tenant, and the file goes when its job is deleted. Resolving an id reads the
job in the caller's namespace, so another tenant's id is the same 404 as an unknown one.
Upload ids are `file-` and hex digits only, so the two kinds of id never collide and an
upload is never looked up as a job.

Deleting the file deletes the results.csv object, as OpenAI lets tenants delete result
files; the job keeps listing the id in `result_files` (its record of what it produced),
and the id then answers 404 like any deleted file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool

from tuneforge.gateway.kube import Kube
from tuneforge.gateway.listing import ListingCache
from tuneforge.gateway.openai_protocol import FileObject
from tuneforge.gateway.times import unix
from tuneforge.jobfiles import RESULTS_CSV, JobFiles
from tuneforge.storage import ArtifactStore

PURPOSE = "fine-tune-results"
PREFIX = "file-results-"
JOB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
"""What a FineTuningJob may be called: a Kubernetes object name (DNS subdomain, at most 253
characters). Jobs applied with kubectl need not be named `ftjob-...`."""
PLURAL = "finetuningjobs"


def results_file_id(job: str) -> str:
    """The File id of job `job`'s results.csv."""
    return PREFIX + job


def job_of(file_id: str) -> str | None:
    """The job a results File id names, or None when `file_id` is not one."""
    job = file_id.removeprefix(PREFIX)
    return job if job != file_id and JOB_NAME.match(job) else None


def result_file_ids(resource: Mapping[str, Any]) -> list[str]:
    """The job object's `result_files`: the results File once the trainer reported writing it."""
    status = resource.get("status") or {}
    return [results_file_id(resource["metadata"]["name"])] if status.get("resultFiles") else []


def results_path(store: ArtifactStore, namespace: str, job: str) -> str:
    return JobFiles.of(store, namespace, job).path(RESULTS_CSV)


def content_path(store: ArtifactStore, namespace: str, file_id: str) -> str:
    """Where the bytes of results File `file_id` of `namespace` are."""
    job = job_of(file_id)
    if job is None:
        raise ValueError(f"{file_id!r} is not a results File id")
    return results_path(store, namespace, job)


def file_object(resource: Mapping[str, Any], size: int) -> FileObject:
    """The File object of a job's results.csv of `size` bytes, created when the job finished."""
    meta, status = resource["metadata"], resource.get("status") or {}
    return FileObject(
        id=results_file_id(meta["name"]),
        bytes=size,
        created_at=unix(status.get("finishedAt") or meta["creationTimestamp"]),
        filename=f"{meta['name']}-results.csv",
        purpose=PURPOSE,
        status="processed",
    )


def _size(store: ArtifactStore, path: str) -> int | None:
    """The object's size, or None when it is gone (deleted, or its job's directory was)."""
    store.fs.invalidate_cache(path)
    try:
        return store.size(path)
    except FileNotFoundError:
        return None


def _objects(store: ArtifactStore, resources: list[dict]) -> list[FileObject]:
    files = []
    for resource in resources:
        if result_file_ids(resource):
            meta = resource["metadata"]
            size = _size(store, results_path(store, meta["namespace"], meta["name"]))
            if size is not None:
                files.append(file_object(resource, size))
    return files


async def find(kube: Kube, store: ArtifactStore, namespace: str, file_id: str) -> FileObject | None:
    """The results File `file_id` of a job in `namespace`, or None (not such an id, no such
    job, no results yet, or the file was deleted)."""
    job = job_of(file_id)
    resource = await kube.get(PLURAL, namespace, job) if job else None
    if resource is None:
        return None
    found = await run_in_threadpool(_objects, store, [resource])
    return found[0] if found else None


async def list_all(listing: ListingCache, store: ArtifactStore, namespace: str) -> list[FileObject]:
    """The results Files of every job in `namespace` that has one."""
    return await run_in_threadpool(_objects, store, await listing.list(PLURAL, namespace))


def delete(store: ArtifactStore, namespace: str, file_id: str) -> None:
    """Deletes the results.csv behind results File `file_id` of `namespace`."""
    store.delete(content_path(store, namespace, file_id))
