"""Which models a tenant can name: catalog BaseModels, the tenant's fine-tuned models
(from succeeded FineTuningJobs) and what the tenant's ModelDeployments serve. Shared by
/v1/models and the chat router so both agree on what exists.
"""

from __future__ import annotations

import re

from tuneforge.api.v1alpha1.common import DNS_LABEL_PATTERN
from tuneforge.api.v1alpha1.finetuningjob import FineTuningJobPhase, job_of_fine_tuned_model
from tuneforge.api.v1alpha1.labels import Label
from tuneforge.gateway.kube import Kube

DNS_LABEL = re.compile(DNS_LABEL_PATTERN)



def is_live_model(job: dict, model_id: str | None = None) -> bool:
    status = job.get("status") or {}
    return (
        status.get("phase") == FineTuningJobPhase.succeeded.value
        and bool(status.get("fineTunedModel"))
        and (model_id is None or status["fineTunedModel"] == model_id)
        and (job["metadata"].get("labels") or {}).get(Label.MODEL_DELETED) != "true"
    )


async def fine_tuned_job(kube: Kube, namespace: str, model_id: str) -> dict | None:
    """The succeeded, undeleted FineTuningJob in `namespace` that produced `model_id`."""
    job_name = job_of_fine_tuned_model(model_id)
    if job_name is None:
        return None
    job = await kube.get("finetuningjobs", namespace, job_name)
    return job if job is not None and is_live_model(job, model_id) else None


async def catalog_model(kube: Kube, name: str) -> dict | None:
    """The BaseModel called `name` (only DNS-label names can be one)."""
    return await kube.get_cluster("basemodels", name) if DNS_LABEL.match(name) else None
