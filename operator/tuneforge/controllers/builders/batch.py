"""What a BatchJob owns: its BatchRun, the runner Job, the finalizer Job that ends a batch
whose runner could not, and the Secret that hands the runner its chat-scoped API key."""

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
    finalizer_job_name,
    runner_configmap_name,
    runner_job_name,
)
from tuneforge.controllers.builders.pods import (
    kueue_labels,
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
RUNNER_COMPONENT = "batch-runner"
FINALIZER_COMPONENT = "batch-finalizer"
BATCH_KEY_ENV = "TUNEFORGE_BATCH_API_KEY"
FINALIZER_BACKOFF_LIMIT = 6
"""Retries of the finalizer, which sends nothing and only reads and writes the store: what
fails it is a store outage, and six retries (Kubernetes waits 10 s doubling to 6 min
between them) ride out about ten minutes of one."""
FINALIZER_DEADLINE_SECONDS = 3600
COMPLETION_WINDOWS = {"1h": 1, "3h": 3, "6h": 6, "12h": 12, "24h": 24}
RUNNER_HARDWARE = Hardware(requests=ResourceList(cpu="100m", memory="512Mi"), limits=ResourceList(memory="2Gi"))
"""The runner only sends HTTP requests and appends results to its journal, whatever the
model, so it needs no hardware profile: a fixed request, with room above it for the
response bodies in flight at high concurrency."""


def expires_at(created: datetime, completion_window: str) -> datetime:
    return created + timedelta(hours=COMPLETION_WINDOWS[completion_window])


def runner_retry_budget(completion_window: str, retries_per_hour: int) -> int:
    """The runner Job's backoffLimit: `retries_per_hour` crashes for each hour of the
    completion window. Kubernetes waits 10 s, doubling up to 6 minutes, before each retry,
    so at the default of 10 per hour a runner that keeps crashing is still retried (and
    resumes from its journal) until its window closes: 1h gets 10 retries, 24h gets 240.
    Disruptions (drain, eviction, preemption) do not count (the podFailurePolicy ignores
    them), and a request that keeps killing the runner is failed by the runner itself."""
    return retries_per_hour * COMPLETION_WINDOWS[completion_window]


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
    return labels_for(RUNNER_COMPONENT, Label.BATCH_JOB, batch)


def finalizer_labels(batch: str) -> dict[str, str]:
    return labels_for(FINALIZER_COMPONENT, Label.BATCH_JOB, batch)


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


def runner_job(body: Mapping[str, Any], run: BatchRun, *, settings: Settings, retries_per_hour: int) -> dict[str, Any]:
    """The batch/v1 Job running `tuneforge-batch`. The runner checkpoints every finished
    request, so a retried Pod continues where the last stopped; its retry budget scales
    with the completion window (`runner_retry_budget`), and activeDeadlineSeconds backs up
    the runner's own expiry handling with the completion window plus grace. With a Kueue
    queue the Job starts suspended and labelled, and Kueue unsuspends it on admission."""
    name, spec = body["metadata"]["name"], body["spec"]
    window = spec.get("completionWindow", "24h")
    job = _runner_pod_job(
        body, run, settings=settings, name=runner_job_name(name), labels=runner_labels(name),
        backoff_limit=runner_retry_budget(window, retries_per_hour),
        deadline_seconds=COMPLETION_WINDOWS[window] * 3600 + int(run.cancel_grace_s) + 300,
    )
    queue = kueue_labels(spec.get("queueName"), spec.get("workloadPriorityClass"))
    if queue:
        job["metadata"]["labels"] = {**job["metadata"]["labels"], **queue}
        job["spec"]["suspend"] = True
    return job


def finalizer_job(body: Mapping[str, Any], run: BatchRun, *, settings: Settings) -> dict[str, Any]:
    """The Job that ends a batch its runner could not finish: the runner's own Pod, which
    finds the `finalize` marker (tuneforge.contracts.BatchFinalize) and only publishes what
    the journal holds. Its own name and component label let the controller follow it
    apart from the runner Job, which stays for `kubectl describe` to tell what happened."""
    name = body["metadata"]["name"]
    return _runner_pod_job(
        body, run, settings=settings, name=finalizer_job_name(name), labels=finalizer_labels(name),
        backoff_limit=FINALIZER_BACKOFF_LIMIT, deadline_seconds=FINALIZER_DEADLINE_SECONDS,
    )


def _runner_pod_job(body: Mapping[str, Any], run: BatchRun, *, settings: Settings, name: str,
                    labels: dict[str, str], backoff_limit: int, deadline_seconds: int) -> dict[str, Any]:
    batch = body["metadata"]["name"]
    access = store_access(settings, [run.input_uri, run.output_uri])
    env = [
        *access["env"],
        {
            "name": BATCH_KEY_ENV,
            "valueFrom": {"secretKeyRef": {"name": batch_key_secret_name(batch), "key": BATCH_KEY_ENV}},
        },
    ]
    container = {
        "name": RUNNER_CONTAINER,
        "image": settings.batch_image,
        "command": ["tuneforge-batch"],
        "args": ["--run", RUN_FILE],
        "env": env,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": body["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "backoffLimit": backoff_limit,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": deadline_seconds,
            "podFailurePolicy": pod_failure_policy(RUNNER_CONTAINER),
            "template": {
                "metadata": {"labels": labels},
                "spec": with_image_pull(pod_spec(
                    container=container,
                    configmap=runner_configmap_name(batch),
                    access=access,
                    place=placement(RUNNER_HARDWARE),
                    restart_policy="Never",
                    grace_seconds=int(run.cancel_grace_s) + 10,
                ), settings),
            },
        },
    }
