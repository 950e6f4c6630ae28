"""The three kinds of /v1/models entries as OpenAI `model` objects: catalog BaseModels,
the caller's fine-tuned models and what the caller's ModelDeployments serve. Pure, so
each kind's fields are tested on plain dicts. Base models are shown by model id, also as
the `parent` of the other two kinds (the callers look it up with `ModelCatalog.model_id`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneforge.api.v1alpha1.basemodel import model_id_of
from tuneforge.gateway.openai_protocol import BaseModelObject, DeployedModelObject, FineTunedModelObject
from tuneforge.gateway.times import unix


def base_model_object(resource: Mapping[str, Any]) -> BaseModelObject:
    spec = resource["spec"]
    return BaseModelObject(
        id=model_id_of(resource),
        created=unix(resource["metadata"]["creationTimestamp"]),
        owned_by=spec.get("provider") or "tuneforge",
        fine_tunable=spec.get("fineTunable", True),
        max_context_length=spec.get("maxContextLength"),
    )


def fine_tuned_model_object(job: Mapping[str, Any], parent: str) -> FineTunedModelObject:
    status = job["status"]
    return FineTunedModelObject(
        id=status["fineTunedModel"],
        created=unix(status.get("finishedAt") or job["metadata"]["creationTimestamp"]),
        owned_by=job["metadata"]["namespace"],
        parent=parent,
        fine_tuning_job=job["metadata"]["name"],
    )


def deployed_model_object(deployment: Mapping[str, Any], name: str, parent: str) -> DeployedModelObject:
    return DeployedModelObject(
        id=name,
        created=unix(deployment["metadata"]["creationTimestamp"]),
        owned_by=deployment["metadata"]["namespace"],
        parent=parent,
        deployment=deployment["metadata"]["name"],
    )
