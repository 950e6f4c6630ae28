"""What a BatchJob owns: its BatchRun, the runner Job, and the Secret that hands the
runner its chat-scoped API key."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from tuneforge.api.v1alpha1 import BatchJobResource
from tuneforge.api.v1alpha1.common import Hardware, ResourceList
from tuneforge.api.v1alpha1.labels import Label
from tuneforge.config import Settings
from tuneforge.contracts import RUN_FILE, BatchRun
from tuneforge.controllers.builders.names import (
    batch_file_ids,
    batch_key_secret_name,
    runner_configmap_name,
    runner_job_name,
)
from tuneforge.controllers.builders.pods import (
    labels_for,
    owned_secret,
    owner_reference,
    placement,
    pod_failure_policy,
    pod_spec,
    run_configmap,
    store_access,
    store_uri,
    with_image_pull,
)

RUNNER_CONTAINER = "runner"
BATCH_KEY_ENV = "TUNEFORGE_BATCH_API_KEY"
BATCH_BACKOFF_LIMIT = 3
COMPLETION_WINDOWS = {"1h": 1, "3h": 3, "6h": 6, "12h": 12, "24h": 24}
RUNNER_HARDWARE = Hardware(requests=ResourceList(cpu="100m", memory="512Mi"), limits=ResourceList(memory="2Gi"))
"""The runner only sends HTTP requests and appends results to its journal, whatever the
model, so it needs no hardware profile: a fixed request, with room above it for the
response bodies in flight at high concurrency."""


def expires_at(created: datetime, completion_window: str) -> datetime:
    return created + timedelta(hours=COMPLETION_WINDOWS[completion_window])

def batch_run(
    batch: BatchJobResource,
    *,
    input_uri: str,
    expires: datetime,
    served: list[str] | None,
    settings: Settings,
) -> BatchRun:
    name, namespace = batch.metadata["name"], batch.metadata["namespace"]
    output_id, error_id = batch_file_ids(namespace, name)
    return BatchRun(
        batch_id=name,
        namespace=namespace,
        input_uri=input_uri,
        endpoint=batch.spec.endpoint.value,
        output_uri=store_uri(settings.store_root, namespace, "batches", name),
        store_root=settings.store_root,
        target_base_url=settings.gateway_internal_url,
        api_key_env=BATCH_KEY_ENV,
        expires_at=expires,
        served_models=served,
        output_file_id=output_id,
        error_file_id=error_id,
        concurrency=batch.spec.concurrency,
    )


def runner_labels(batch: str) -> dict[str, str]:
    return labels_for("batch-runner", Label.BATCH_JOB, batch)


def runner_configmap(body: Mapping[str, Any], run: BatchRun) -> dict[str, Any]:
    name = body["metadata"]["name"]
    return run_configmap(
        runner_configmap_name(name), body["metadata"]["namespace"], body, runner_labels(name), run.dump()
    )


def batch_key_secret(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The Secret in the batch's namespace that hands the runner its chat-scoped key (the
    key's hash lives in the system namespace, see tuneforge.apikeys)."""
    name = body["metadata"]["name"]
    return owned_secret(batch_key_secret_name(name), body, runner_labels(name), {BATCH_KEY_ENV: key})


def runner_job(body: Mapping[str, Any], run: BatchRun, *, settings: Settings) -> dict[str, Any]:
    """The batch/v1 Job running `tuneforge-batch`. The runner checkpoints every finished
    request, so a retried Pod continues where the last stopped; activeDeadlineSeconds
    backs up the runner's own expiry handling with the completion window plus grace."""
    name = body["metadata"]["name"]
    labels = runner_labels(name)
    access = store_access(settings, [run.input_uri, run.output_uri])
    env = [
        *access["env"],
        {
            "name": BATCH_KEY_ENV,
            "valueFrom": {"secretKeyRef": {"name": batch_key_secret_name(name), "key": BATCH_KEY_ENV}},
        },
    ]
    container = {
        "name": RUNNER_CONTAINER,
        "image": settings.batch_image,
        "command": ["tuneforge-batch"],
        "args": ["--run", RUN_FILE],
        "env": env,
    }
    window = COMPLETION_WINDOWS[body["spec"].get("completionWindow", "24h")] * 3600
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": runner_job_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "backoffLimit": BATCH_BACKOFF_LIMIT,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": window + int(run.cancel_grace_s) + 300,
            "podFailurePolicy": pod_failure_policy(RUNNER_CONTAINER),
            "template": {
                "metadata": {"labels": labels},
                "spec": with_image_pull(pod_spec(
                    container=container,
                    configmap=runner_configmap_name(name),
                    access=access,
                    place=placement(RUNNER_HARDWARE),
                    restart_policy="Never",
                    grace_seconds=int(run.cancel_grace_s) + 10,
                ), settings),
            },
        },
    }