"""Which models a tenant can name: catalog BaseModels, the tenant's fine-tuned models
(from succeeded FineTuningJobs) and what the tenant's ModelDeployments serve. Shared by
/v1/models, the chat router and the fine-tuning APIs so all agree on what exists.

Catalog models are named by model id, or by BaseModel resource name as an alias, by the
rule of `basemodel.ModelCatalog` (the one the BaseModel controller refuses duplicates by).
Every chat request and job view needs the catalog, so `Catalog` keeps it for a few
seconds (`caching`); an id it does not know is looked up afresh before it is refused, so
an entry is usable the moment it exists. The listings and job creation read it afresh
every time, and chat routing reads it afresh before it answers that nothing serves a
catalog model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tuneforge.api.v1alpha1.basemodel import MODEL_ID, ModelCatalog
from tuneforge.api.v1alpha1.finetuningjob import FineTuningJobPhase, job_of_fine_tuned_model
from tuneforge.api.v1alpha1.labels import Label
from tuneforge.gateway.caching import RefreshingCache
from tuneforge.gateway.kube import Kube


class Catalog:
    """The BaseModels as a `ModelCatalog`, cached for `ttl` seconds (cluster-scoped and
    small: one list reads it whole)."""

    def __init__(self, kube: Kube, ttl: float) -> None:
        self.kube = kube
        self._cache: RefreshingCache[None, ModelCatalog] = RefreshingCache(ttl, max_entries=1)

    async def _load(self) -> ModelCatalog:
        return ModelCatalog.of(await self.kube.list_cluster("basemodels"))

    async def current(self, knowing: Iterable[str] = ()) -> ModelCatalog:
        """The cached catalog, read afresh once when it does not know one of `knowing`
        (ids or resource names that may have appeared since it was read)."""
        catalog = await self._cache.get(None, self._load)
        if all(catalog.knows(name) for name in knowing):
            return catalog
        return await self.fresh()

    async def fresh(self) -> ModelCatalog:
        """The catalog as the API server has it now (and cached from then on)."""
        self._cache.forget(None)
        return await self._cache.get(None, self._load)

    async def resolve(self, requested: str, *, fresh: bool = False) -> Mapping[str, Any] | None:
        """The BaseModel `requested` names, by model id or resource name (only what matches
        the model id pattern can be one, so a fine-tuned id costs no lookup). `fresh` reads
        the catalog anew even when the cached one knows the id, for what is written down
        (a job's base model): an entry deleted and made again under the same id within
        the cache's lifetime must not be named by its old resource name."""
        if not MODEL_ID.fullmatch(requested):
            return None
        catalog = await (self.fresh() if fresh else self.current([requested]))
        return catalog.resolve(requested)


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
