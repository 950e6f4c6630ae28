"""FineTuningJobs as both APIs create and read them. The OpenAI routes and the management
API call these functions with the Kubernetes client, the catalog, the store and the
caller's principal they hold, so the two APIs create the very same resource and read the
same reports; the functions know nothing of HTTP requests.

The gateway writes only spec (desired state: cancel and suspend included) and reads status
written by the controller, plus the trainer's reports (events, metrics, complete
checkpoints) from the artifact store through `tuneforge.jobfiles`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from tuneforge.api.sizing import SizingError, size_training
from tuneforge.api.v1alpha1 import BaseModelSpec, FineTuningJobResource, FineTuningJobSpec
from tuneforge.api.v1alpha1.finetuningjob import JOB_NAME_PREFIX
from tuneforge.api.v1alpha1.labels import Annotation
from tuneforge.config import settings
from tuneforge.gateway.auth import Principal
from tuneforge.gateway.catalog import Catalog
from tuneforge.gateway.errors import bad_request, not_found
from tuneforge.gateway.files import FILE_ID, file_meta, files_named, validation_error
from tuneforge.gateway.fine_tuning_objects import checkpoint_model, checkpoint_object, event_objects
from tuneforge.gateway.ids import create_once
from tuneforge.gateway.kube import Kube
from tuneforge.gateway.listing import ListingCache
from tuneforge.gateway.openai_protocol import FileObject, FineTuningJobCheckpoint, FineTuningJobEvent
from tuneforge.gateway.platform_key import platform_key
from tuneforge.jobfiles import JobFiles
from tuneforge.storage import ArtifactStore
from tuneforge.webhook_signing import job_signing_secret

PLURAL = "finetuningjobs"
SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]*$")

OPENAI_PARAMS: Mapping[str, str] = {
    "model": "model", "training_file": "training_file", "validation_file": "validation_file", "suffix": "suffix",
    "webhook_url": "webhook_url",
}
"""The OpenAI API's name of each field a create check can name; the sizing checks' params
(hardware.nodes, distributed.processes_per_node, ...) are already spelt as there."""


@dataclass(frozen=True)
class JobDraft:
    """A job as either API asks for it, in FineTuningJob terms, so both APIs create the very
    same resource. `params` spells each field the way the calling API does, so errors name
    the caller's own fields."""

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    hyperparameters: Mapping[str, object] = field(default_factory=dict)
    """FineTuningJobSpec.hyperparameters fields (Python names)."""
    metadata: Mapping[str, str] | None = None
    display_name: str | None = None
    description: str | None = None
    hardware: Mapping[str, object] | None = None
    """FineTuningJobSpec.hardware fields (Python names); tenants may pick a profile, the GPU
    count and the nodes, never placement (node selectors, tolerations)."""
    distributed: Mapping[str, object] = field(default_factory=dict)
    """FineTuningJobSpec.distributed fields (Python names)."""
    webhook_url: str | None = None
    """Called when the job succeeds or fails, signed with a secret the platform derives
    for the job (`webhook_secret` hands it to the caller)."""
    params: Mapping[str, str] = field(default_factory=lambda: OPENAI_PARAMS)


async def create_job_once(kube: Kube, store: ArtifactStore, principal: Principal, draft: JobDraft, *,
                          catalog: Catalog, idempotency_key: str | None, request_body: dict) -> dict:
    """Creates the FineTuningJob for `draft` once per idempotency key (both APIs' create)."""

    async def build(name: str) -> dict:
        return await _build_job(catalog, store, principal, draft, name)

    return await create_once(kube, PLURAL, principal.tenant, prefix="ftjob", idempotency_key=idempotency_key,
                             request_body=request_body, build=build)


def is_webhook_url(url: str) -> bool:
    parts = urlsplit(url)
    return len(url) <= 2048 and parts.scheme in ("http", "https") and bool(parts.hostname)


async def signing_key(kube: Kube, draft: JobDraft) -> str | None:
    """The platform key a job with a webhook needs, read before the job is created: a
    missing key is a 503 with nothing created, not a job whose secret nobody got."""
    wanted = draft.webhook_url is not None and is_webhook_url(draft.webhook_url)
    return await platform_key(kube) if wanted else None


def webhook_secret(key: str | None, resource: Mapping) -> str | None:
    """The secret the job's webhook deliveries are signed with, when the platform signs
    them (jobs created with a webhook through either API)."""
    notifications = resource["spec"].get("notifications") or {}
    if key is None or not notifications.get("signWithPlatformKey"):
        return None
    meta = resource["metadata"]
    return job_signing_secret(key, meta["namespace"], meta["name"])


async def _build_job(catalog: Catalog, store: ArtifactStore, principal: Principal, draft: JobDraft,
                     name: str) -> dict:
    """The FineTuningJob resource for `draft`, after the checks the API server cannot do:
    the model is a fine-tunable catalog entry (named by model id or resource name; the job
    references its resource name) and the files are this tenant's valid fine-tuning
    uploads."""
    params = draft.params
    base = await catalog.resolve(draft.model, fresh=True)
    if base is None:
        raise bad_request(f"Model '{draft.model}' is not in the catalog.", param=params["model"],
                          code="model_not_available")
    if not base["spec"].get("fineTunable", True):
        raise bad_request(f"Model '{draft.model}' cannot be fine-tuned.", param=params["model"],
                          code="model_not_available")
    if draft.webhook_url is not None and not is_webhook_url(draft.webhook_url):
        raise bad_request("webhook URL must be an absolute http:// or https:// URL of at most 2048 characters.",
                          param=params["webhook_url"], code="invalid_webhook_url")
    if draft.suffix is not None and not SUFFIX.match(draft.suffix):
        raise bad_request("suffix must be lowercase letters, digits and dashes, starting with a letter or digit.",
                          param=params["suffix"], code="invalid_suffix")
    await run_in_threadpool(check_fine_tune_file, store, principal.tenant, draft.training_file,
                            params["training_file"])
    if draft.validation_file:
        await run_in_threadpool(check_fine_tune_file, store, principal.tenant, draft.validation_file,
                                params["validation_file"])
    try:
        spec = FineTuningJobSpec(
            base_model=base["metadata"]["name"],
            training_file=draft.training_file,
            validation_file=draft.validation_file,
            suffix=draft.suffix,
            metadata=dict(draft.metadata) if draft.metadata is not None else None,
            display_name=draft.display_name,
            description=draft.description,
            hyperparameters=dict(draft.hyperparameters),
            hardware=dict(draft.hardware) if draft.hardware else None,
            distributed=dict(draft.distributed),
            notifications={"webhook_url": draft.webhook_url, "sign_with_platform_key": True}
            if draft.webhook_url else None,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise bad_request(f"{first['msg']}", param=".".join(map(str, first["loc"])), code="invalid_value") from exc
    _check_size(spec, base, params)
    annotations = {Annotation.CREATED_BY: principal.key_name} if principal.key_name else {}
    return FineTuningJobResource(
        metadata={"name": name, "namespace": principal.tenant, "annotations": annotations}, spec=spec
    ).to_wire()


def named_file_id(reference: str, named: Sequence[FileObject], param: str) -> str:
    """Which of the fine-tuning uploads called `reference` a request means: the only one,
    or the only one that passed validation (a file re-uploaded under its name after a
    failed validation replaces it). Otherwise the name is a 400: ambiguous, listing the ids,
    or unknown, as an unknown file id is."""
    candidates = named if len(named) < 2 else [meta for meta in named if meta.status == "processed"]
    if len(candidates) == 1:
        return candidates[0].id
    if len(named) > 1:
        ids = ", ".join(meta.id for meta in named)
        raise bad_request(f"{len(named)} fine-tuning files are named '{reference}' ({ids}); give the file id.",
                          param=param, code="ambiguous_file_name")
    raise bad_request(f"File '{reference}' does not exist: no fine-tuning upload has this id or file name.",
                      param=param, code="invalid_file")


async def resolve_file_reference(store: ArtifactStore, namespace: str, reference: str, param: str) -> str:
    """The file id a management API request means: the id itself, or the fine-tuning
    upload of that file name (named_file_id)."""
    if FILE_ID.match(reference):
        return reference
    return named_file_id(reference, await run_in_threadpool(files_named, store, namespace, reference, "fine-tune"),
                         param)


def check_fine_tune_file(store: ArtifactStore, namespace: str, file_id: str, param: str) -> None:
    """A training or validation file must be an upload of this tenant, purpose fine-tune,
    that passed validation; URIs are refused here (they would let a tenant point a job at
    any path the trainer can read)."""
    meta = file_meta(store, namespace, file_id)
    if meta is None:
        raise bad_request(f"File '{file_id}' does not exist.", param=param, code="invalid_file")
    if meta.purpose != "fine-tune":
        raise bad_request(f"File '{file_id}' has purpose '{meta.purpose}', not 'fine-tune'.", param=param,
                          code="invalid_file_purpose")
    if meta.status != "processed":
        error = validation_error(store, namespace, file_id) or {}
        raise bad_request(f"File '{file_id}' is not a valid fine-tuning file: {meta.status_details}",
                          param=param, code=error.get("code", "invalid_file"))


def _check_size(spec: FineTuningJobSpec, base: dict, params: Mapping[str, str]) -> None:
    """The hardware checks the controller would fail the job with (tuneforge.api.sizing),
    made before the job exists: GPUs, nodes and processes no profile offers, fsdp with
    QLoRA, an unknown profile."""
    try:
        size_training(spec, BaseModelSpec.model_validate(base["spec"]), settings())
    except SizingError as exc:
        raise bad_request(exc.message, param=params.get(exc.param, exc.param), code=exc.code) from exc


async def find_job(kube: Kube, tenant: str, job_id: str, *, param: str) -> dict:
    """The caller's job; another tenant's id and an unknown one are both 404, so ids never leak."""
    resource = await kube.get(PLURAL, tenant, job_id) if job_id.startswith(JOB_NAME_PREFIX) else None
    if resource is None:
        raise not_found("fine-tuning job", job_id, param=param)
    return resource


def _being_deleted(resource: Mapping) -> bool:
    return bool(resource["metadata"].get("deletionTimestamp"))


async def find_live_job(kube: Kube, tenant: str, job_id: str, *, param: str) -> dict:
    """find_job, where a job being deleted is 404 too (the management API, which deletes
    jobs, hides them at once)."""
    resource = await find_job(kube, tenant, job_id, param=param)
    if _being_deleted(resource):
        raise not_found("fine-tuning job", job_id, param=param)
    return resource


async def list_jobs(listing: ListingCache, tenant: str) -> list[dict]:
    """The tenant's jobs (shared dicts: not to be modified), with this replica's writes."""
    return await listing.list(PLURAL, tenant)


async def list_live_jobs(listing: ListingCache, tenant: str) -> list[dict]:
    return [resource for resource in await list_jobs(listing, tenant) if not _being_deleted(resource)]


async def set_spec(kube: Kube, tenant: str, job_id: str, spec: Mapping[str, object]) -> dict:
    """Writes desired state (cancel, suspend) for the controller to act on; the patched job."""
    return await kube.patch(PLURAL, tenant, job_id, {"spec": dict(spec)})


def read_events(store: ArtifactStore, namespace: str, job: str) -> list[FineTuningJobEvent]:
    """The trainer's events and the operator's (webhook deliveries), newest first; the
    sort is stable, so events of one second keep the order they were written in."""
    files = JobFiles.of(store, namespace, job)
    events = event_objects(job, files.events()) + event_objects(job, files.platform_events())
    return sorted(events, key=lambda event: event.created_at, reverse=True)


def read_checkpoints(store: ArtifactStore, resource: Mapping, base_model_id: str) -> list[FineTuningJobCheckpoint]:
    """The complete checkpoints, newest first, with the metrics of their steps; named after
    the fine-tuned id, which names the base by `base_model_id` until the job has its own."""
    namespace, job = resource["metadata"]["namespace"], resource["metadata"]["name"]
    files = JobFiles.of(store, namespace, job)
    steps = files.complete_checkpoints()
    if not steps:
        return []
    metrics = files.metrics_by_step()
    model = checkpoint_model(resource, base_model_id)
    return [checkpoint_object(job, model, step, files.checkpoint_created_at(step), metrics.get(step, {}))
            for step in reversed(steps)]
