"""A job's logs and metrics: the trainer Pod's log through the Kubernetes API (the
trainer's events when no Pod log can be had), and the curve of its metrics log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.api.v1alpha1.labels import Label
from tuneforge.gateway import fine_tuning_service as service
from tuneforge.gateway.auth import Principal, require
from tuneforge.gateway.management.log_entries import event_log_entries, newest_pod, pod_log_entries
from tuneforge.gateway.management.protocol import JobLogs, JobMetrics
from tuneforge.gateway.management.training_metrics import metrics_view
from tuneforge.gateway.times import parse_time, rfc3339
from tuneforge.jobfiles import JobFiles
from tuneforge.storage import ArtifactStore

router = APIRouter()

TRAINER_CONTAINER = "trainer"
MAX_LOG_LINES = 5000


def _metric_records(store: ArtifactStore, namespace: str, job: str) -> list[dict]:
    return list(JobFiles.of(store, namespace, job).metrics_by_step().values())


@router.get("/jobs/{job_id}/logs", response_model=JobLogs, summary="The trainer's log lines, oldest first")
async def job_logs(
    job_id: str,
    request: Request,
    principal: Principal = Depends(require("fine-tuning:read")),
    lines: Annotated[int, Query(ge=1, le=MAX_LOG_LINES, description="At most this many, the newest")] = 100,
    since: Annotated[str | None, Query(description="ISO 8601; only lines at or after it")] = None,
) -> JobLogs:
    kube = request.app.state.kube
    await service.find_live_job(kube, principal.tenant, job_id, param="id")
    since_at = parse_time(since, "since") if since is not None else None
    pod = newest_pod(await kube.list_pods(principal.tenant, f"{Label.FINE_TUNING_JOB}={job_id}"))
    if pod is not None:
        # sinceTime has second precision; the exact cut is made on the parsed lines.
        text = await kube.pod_log(principal.tenant, pod["metadata"]["name"], TRAINER_CONTAINER, tail_lines=lines,
                                  since_time=rfc3339(since_at) if since_at else None)
        if text is not None:
            return JobLogs(job_id=job_id, source="pod", pod=pod["metadata"]["name"],
                           logs=pod_log_entries(text, since=since_at)[-lines:])
    events = await run_in_threadpool(JobFiles.of(request.app.state.store, principal.tenant, job_id).events)
    return JobLogs(job_id=job_id, source="events", pod=None,
                   logs=event_log_entries(events, since=since_at, lines=lines))


@router.get("/jobs/{job_id}/metrics", response_model=JobMetrics,
            summary="Latest losses, epochs, tokens and the per-step curve")
async def job_metrics(job_id: str, request: Request,
                      principal: Principal = Depends(require("fine-tuning:read"))) -> JobMetrics:
    state = request.app.state
    resource = await service.find_live_job(state.kube, principal.tenant, job_id, param="id")
    records = await run_in_threadpool(_metric_records, state.store, principal.tenant, job_id)
    return metrics_view(resource, records)
