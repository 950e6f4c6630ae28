"""tuneforge.io/v1alpha1: the four kinds, as pydantic models (the CRDs are generated)."""

from tuneforge.api.v1alpha1.basemodel import BaseModelResource, BaseModelSpec, BaseModelStatus
from tuneforge.api.v1alpha1.batchjob import BatchJobResource, BatchJobSpec, BatchJobStatus
from tuneforge.api.v1alpha1.common import API_VERSION, GROUP, VERSION
from tuneforge.api.v1alpha1.finetuningjob import FineTuningJobResource, FineTuningJobSpec, FineTuningJobStatus
from tuneforge.api.v1alpha1.modeldeployment import (
    ModelDeploymentResource,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)

KINDS = (BaseModelResource, FineTuningJobResource, ModelDeploymentResource, BatchJobResource)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "BaseModelResource",
    "BaseModelSpec",
    "BaseModelStatus",
    "BatchJobResource",
    "BatchJobSpec",
    "BatchJobStatus",
    "FineTuningJobResource",
    "FineTuningJobSpec",
    "FineTuningJobStatus",
    "ModelDeploymentResource",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
]
