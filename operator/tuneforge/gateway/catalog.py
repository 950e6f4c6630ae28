"""Which models a tenant can name: catalog BaseModels, the tenant's fine-tuned models
(from succeeded FineTuningJobs) and what the tenant's ModelDeployments serve. Shared by
/v1/models and the chat router so both agree on what exists.
"""

from __future__ import annotations

import re

from tuneforge.api.v1alpha1.common import DNS_LABEL_PATTERN
from tuneforge.gateway.kube import Kube

DNS_LABEL = re.compile(DNS_LABEL_PATTERN)

DELETED_LABEL = "tuneforge.io/model-deleted"
"""Set on a FineTuningJob whose model was deleted through DELETE /v1/models/{id}: the job
(its history) stays, the model is gone from listings and routing."""


def job_name_of(model_id: str) -> str | None:
    """The job id in `ft:<base>:<namespace>:<suffix>:<job>`, or None for other ids."""
    parts = model_id.split(":")
    if len(parts) == 5 and parts[0] == "ft" and parts[4].startswith("ftjob-"):
        return parts[4]
    return None


def is_live_model(job: dict, model_id: str | None = None) -> bool:
    status = job.get("status") or {}
    return (
        status.get("phase") == "Succeeded"
        and bool(status.get("fineTunedModel"))
        and (model_id is None or status["fineTunedModel"] == model_id)
        and (job["metadata"].get("labels") or {}).get(DELETED_LABEL) != "true"
    )


async def fine_tuned_job(kube: Kube, namespace: str, model_id: str) -> dict | None:
    """The succeeded, undeleted FineTuningJob in `namespace` that produced `model_id`."""
    job_name = job_name_of(model_id)
    if job_name is None:
        return None
    job = await kube.get("finetuningjobs", namespace, job_name)
    return job if job is not None and is_live_model(job, model_id) else None


async def catalog_model(kube: Kube, name: str) -> dict | None:
    """The BaseModel called `name` (only DNS-label names can be one)."""
    return await kube.get_cluster("basemodels", name) if DNS_LABEL.match(name) else None
