"""Whether a FineTuningJob can start: its base model and its files, checked before any
trainer runs, so that a bad request fails in seconds with an OpenAI-shaped error naming
the field at fault instead of as a trainer Pod crashing on it minutes later.
"""

from __future__ import annotations

from tuneforge.api.sizing import SizingError, size_training
from tuneforge.api.v1alpha1 import BaseModelResource, FineTuningJobResource
from tuneforge.api.v1alpha1.common import ApiError
from tuneforge.config import settings
from tuneforge.controllers import builders
from tuneforge.controllers.status import find_condition, parse_timestamp, utcnow
from tuneforge.controllers.store import open_lines, resolve_file
from tuneforge.datasets import DatasetError, validate_fine_tune_file
from tuneforge.storage import StoreError


class Wait(Exception):
    """Validation cannot finish yet (the base model is not there or not validated itself)."""


class Invalid(Exception):
    """The job cannot run as asked; `error` says why, as the job's status reports it."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def validate(ft: FineTuningJobResource, base: dict | None, *, dependency_grace: float) -> tuple[str, str | None]:
    """Checks the base model (`base`, its body from the index) and both files; returns the
    files' URIs. A BaseModel that is not there yet is waited for during the dependency
    grace, since objects applied together arrive in any order."""
    spec = ft.spec
    namespace = ft.metadata["namespace"]
    name_problem = builders.owner_name_problem("FineTuningJob", ft.metadata["name"])
    if name_problem is not None:
        raise Invalid(ApiError(code="invalid_name", message=name_problem, param=None))
    if base is None:
        created = parse_timestamp(ft.metadata.get("creationTimestamp")) or utcnow()
        if (utcnow() - created).total_seconds() < dependency_grace:
            raise Wait(f"waiting for BaseModel {spec.base_model!r}")
        raise Invalid(ApiError(code="model_not_found", message=f"model {spec.base_model!r} is not in the catalog", param="model"))
    base_status = base.get("status") or {}
    base_phase = base_status.get("phase")
    if base_phase == "Failed":
        ready = find_condition(base_status.get("conditions"), "Ready") or {}
        why = ready.get("message") or "its source is invalid"
        raise Invalid(ApiError(code="model_not_available", message=f"model {spec.base_model!r} is not ready: {why}", param="model"))
    if base_phase != "Ready":
        raise Wait(f"waiting for BaseModel {spec.base_model!r} to be Ready")
    if not base["spec"].get("fineTunable", True):
        raise Invalid(ApiError(code="model_not_fine_tunable", message=f"model {spec.base_model!r} cannot be fine-tuned", param="model"))
    try:
        size = size_training(spec, BaseModelResource.model_validate(base).spec, settings())
    except SizingError as exc:
        raise Invalid(exc.api_error()) from None
    name_problem = builders.group_name_problem(ft.metadata["name"]) if size.nodes > 1 else None
    if name_problem is not None:
        raise Invalid(ApiError(code="invalid_name", message=name_problem, param=None))
    lrm = spec.hyperparameters.learning_rate_multiplier
    if lrm != "auto" and not 0 < lrm <= 100:
        raise Invalid(ApiError(
            code="invalid_hyperparameters",
            message=f"learning_rate_multiplier must be 'auto' or a number in (0, 100], got {lrm}",
            param="hyperparameters.learning_rate_multiplier",
        ))
    training = _check_file(namespace, spec.training_file, "training_file")
    validation = _check_file(namespace, spec.validation_file, "validation_file") if spec.validation_file else None
    return training, validation


def _check_file(namespace: str, ref: str, param: str) -> str:
    try:
        uri = resolve_file(namespace, ref)
        validate_fine_tune_file(open_lines(uri))
    except StoreError:
        raise Invalid(ApiError(code="file_not_found", message=f"{param} {ref!r} does not exist", param=param)) from None
    except DatasetError as exc:
        raise Invalid(ApiError(code=exc.code, message=f"{param}: {exc.message}", param=param)) from None
    return uri
