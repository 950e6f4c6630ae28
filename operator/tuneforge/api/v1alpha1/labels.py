"""The label and annotation keys and port names tuneforge puts on Kubernetes objects.

The operator writes them and the gateway selects and routes by them, so a key spelt
differently in one place silently splits the platform: a deployment the gateway never
finds, a Pod it cannot address. They live here, on the ground floor, once (as KubeAI keeps
its keys in one metadata file).
"""

from __future__ import annotations

from typing import Final

OPERATOR_NAME: Final = "tuneforge"
"""The value of `app.kubernetes.io/managed-by` on every object the operator creates."""

FINALIZER: Final = "tuneforge.io/finalizer"

RESTRICTED_NAMESPACE_LABELS: Final = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
"""Pod Security admission's labels for the "restricted" profile, which the system and tenant
namespaces enforce (docs/install.md, Pod Security): every Pod the operator creates must be
admitted under it. `make dev` and `tuneforge keys create --create-namespace` label the
namespaces they create with them."""


class Label:
    """Label keys: what selectors and indexes find objects by."""

    MANAGED_BY: Final = "app.kubernetes.io/managed-by"
    COMPONENT: Final = "app.kubernetes.io/component"
    """trainer, inference or batch-runner: which kind of child an object is."""
    FINE_TUNING_JOB: Final = "tuneforge.io/fine-tuning-job"
    """On a trainer Job, its Pods and Service; on the ModelDeployment `deploy` creates."""
    BATCH_JOB: Final = "tuneforge.io/batch-job"
    MODEL_DEPLOYMENT: Final = "tuneforge.io/model-deployment"
    BASE_MODEL: Final = "tuneforge.io/base-model"
    """On a BaseModel's shared multi-LoRA ModelDeployment: the BaseModel it serves."""
    SHARED: Final = "tuneforge.io/shared"
    """"true" on a BaseModel's shared ModelDeployment in the system namespace."""
    API_KEY: Final = "tuneforge.io/api-key"
    """"true" on the Secret of an API key."""
    TENANT: Final = "tuneforge.io/tenant"
    """On an API key's Secret (and a batch's key): the namespace it acts in."""
    MODEL_DELETED: Final = "tuneforge.io/model-deleted"
    """"true" on a FineTuningJob whose model was deleted through DELETE /v1/models/{id}:
    the job (its history) stays, the model is gone from listings and routing."""
    KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"
    KUEUE_PRIORITY_CLASS: Final = "kueue.x-k8s.io/priority-class"


class Annotation:
    SPEC_HASH: Final = "tuneforge.io/spec-hash"
    """On a child object: the hash of what it was built from, so a changed spec is seen
    without comparing fields the API server defaulted."""
    CREATED_BY: Final = "tuneforge.io/created-by"
    """On a resource created through the gateway: the API key (its Secret) that created it."""
    REQUEST_HASH: Final = "tuneforge.io/request-hash"
    """On a resource created with an idempotency key: the hash of the request body, so a
    replay with a different body is refused instead of answered with the first result."""
    HELD_REQUESTS: Final = "tuneforge.io/held-requests"
    """On a ModelDeployment: requests a gateway holds because no replica is ready, and
    when it counted them (see autoscaling.held_requests)."""


class PortName:
    """Container port names: the gateway addresses Pods by them, not by number."""

    HTTP: Final = "http"
    """The OpenAI API of a serving Pod."""
    ADAPTERS: Final = "adapters"
    """The adapter-loader sidecar of a serving Pod whose adapters live on an object store."""
    RENDEZVOUS: Final = "rendezvous"
    """torchrun's c10d rendezvous on the first Pod of a multi-node trainer."""
