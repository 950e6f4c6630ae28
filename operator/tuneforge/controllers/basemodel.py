"""BaseModel controller: validate the catalog entry and keep its shared deployment.

A BaseModel is Ready when its source URI resolves: the syntax of every scheme is checked,
and sources the operator can see itself (file://, and gguf:// weights shipped in an
installed Python package) must exist. pvc:// and s3:// are only visible to the Pods
that mount or fetch them, so a wrong path there surfaces as a failing Pod, not here.

It must also hold its model id: an entry claiming the model id or resource name of an
older entry (`ModelCatalog`, the rule the gateway resolves ids by) is Failed with reason
DuplicateModelId until the clash is gone. Every entry is re-checked on each tick, so a
refused entry becomes Ready once the older one is deleted or renamed.

Its name must be one a `baseModel` reference can hold, a DNS label: an entry named
otherwise (`qwen2.5-7b`; the model id with its dots belongs in spec.modelId) is Failed
with reason InvalidName.

With spec.sharedDeployment, the controller keeps one multi-LoRA ModelDeployment of the
model in the system namespace, named after it (`builders.shared_deployment_name`), which
the gateway loads fine-tuned adapters into; turning the flag off deletes it.
"""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from tuneforge.api.v1alpha1 import GROUP, VERSION, BaseModelResource
from tuneforge.api.v1alpha1.basemodel import ModelCatalog
from tuneforge.config import settings
from tuneforge.controllers import builders, kube
from tuneforge.controllers.children import first
from tuneforge.controllers.settings import ControllerSettings
from tuneforge.controllers.status import find_condition, set_condition
from tuneforge.controllers.ticker import Ticking, plain
from tuneforge.storage import StoreError, filesystem

KIND = "BaseModel"
PLURAL = "basemodels"


def check_source(uri: str) -> str | None:
    """Why the source URI is unusable, or None when it is fine."""
    scheme, _, rest = uri.partition("://")
    if scheme in ("pvc", "s3"):
        head, _, path = rest.partition("/")
        if not head or not path:
            return f"{uri!r} must name a {'claim' if scheme == 'pvc' else 'bucket'} and a path"
        return None
    try:
        fs, path = filesystem(uri)
    except StoreError as exc:
        return str(exc)
    if not fs.exists(path):
        return f"nothing exists at {uri!r}"
    return None


def model_id_clash(raw: dict, basemodels: Any) -> str | None:
    """Why the entry's model id is not its own (an older entry holds it), or None. The
    index may not have seen this entry yet, so it is added as it is now."""
    entries = {entry["body"]["metadata"]["name"]: entry["body"] for values in basemodels.values() for entry in values}
    name = raw["metadata"]["name"]
    entries[name] = raw
    found = ModelCatalog.of(entries.values()).clashes.get(name)
    return found.message(name) if found else None


def _reconcile(raw: dict, status: dict, kwargs: dict[str, Any]) -> dict[str, Any]:
    base = BaseModelResource.model_validate(raw)
    generation = raw["metadata"].get("generation")
    desired = dict(status)
    desired["observedGeneration"] = generation
    if problem := builders.base_model_name_problem(raw["metadata"]["name"]):
        reason = "InvalidName"
    elif problem := model_id_clash(raw, kwargs["tf_basemodels"]):
        reason = "DuplicateModelId"
    elif problem := check_source(base.spec.source.uri):
        reason = "InvalidSource"
    else:
        reason = "SourceResolved"
    phase = "Failed" if problem else "Ready"
    desired["conditions"] = set_condition(
        status.get("conditions"), "Ready", problem is None, reason,
        problem or f"weights at {base.spec.source.uri}", generation=generation,
    )
    desired["phase"] = phase
    previous = find_condition(status.get("conditions"), "Ready") or {}
    if phase != status.get("phase") or reason != previous.get("reason"):
        if problem:
            kopf.warn(raw, reason=reason, message=problem)
        else:
            kopf.info(raw, reason="Ready", message="catalog entry is ready")
    if not problem:
        _shared_deployment(raw, base, kwargs["tf_modeldeployments"])
    return desired


def _shared_deployment(raw: dict, base: BaseModelResource, deployments: Any) -> None:
    """Creates, updates or deletes the shared ModelDeployment to match the spec. The
    index tells whether it exists and whether its spec already matches (no API call)."""
    namespace = settings().system_namespace
    name = builders.shared_deployment_name(base.metadata["name"])
    existing = first(deployments.get((namespace, name)))
    if not base.spec.shared_deployment:
        if existing is not None and existing["shared"]:
            kube.delete_custom(namespace, "ModelDeployment", name)
            kopf.info(raw, reason="SharedDeploymentDeleted", message=f"deleted {namespace}/{name}")
        return
    desired = builders.shared_deployment(raw, base, namespace)
    if existing is not None and all(existing["spec"].get(k) == v for k, v in desired["spec"].items()):
        return
    try:
        kube.apply(desired)
    except ApiException as exc:
        if exc.status == 404:
            kopf.warn(raw, reason="SharedDeploymentFailed", message=f"namespace {namespace} does not exist")
            return
        raise
    kopf.info(raw, reason="SharedDeployment", message=f"applied shared deployment {namespace}/{name}")


def index(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    """BaseModels by name, for the other controllers' validation and the model id check."""
    return {name: {"body": plain(body)}}


def register(registry: kopf.OperatorRegistry, controller_settings: ControllerSettings, ticking: Ticking) -> None:
    """A catalog entry changes rarely and its check may touch the store, so it is polled
    five times less often than the jobs."""
    kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="tf_basemodels")(index)
    ticking.install(registry, KIND, PLURAL, _reconcile, interval=controller_settings.poll_interval * 5,
                    cluster_scoped=True)
