"""ModelDeployment controller: a Deployment, Service and serving-spec ConfigMap per object.

The children are (re)applied whenever the rendered Deployment's spec hash differs from
the one on the live Deployment (from the watch index), so a spec change rolls the Pods
and an unchanged object costs no API call. Phase is read from the Deployment's status:

- Ready: the Deployment controller has seen the current generation, every Pod belongs to
  it, and `replicas` of them pass their readiness probe (a crash-looping Pod never does);
- Degraded: it was Ready and has lost ready Pods;
- Failed: the rollout exceeded its progress deadline (or the BaseModel is invalid, or the
  name cannot name a Service: `builders.service_name_problem`);
- Deploying: a rollout is under way; Pending: nothing to run yet (no BaseModel, 0 replicas).

Pods the API server refuses to create show as the PodsAdmitted condition, from the
Deployment's ReplicaFailure (tuneforge.controllers.admission).

With spec.autoscaling the replica count is the autoscaler's (tuneforge.controllers.autoscaler):
the Deployment is applied with its last decision and rescaled by it alone.
"""

from __future__ import annotations

from typing import Any

import kopf

from tuneforge.api.sizing import UnknownHardwareProfile, profile_of
from tuneforge.api.v1alpha1 import GROUP, VERSION, BaseModelResource, ModelDeploymentResource
from tuneforge.api.v1alpha1.labels import Annotation, Label
from tuneforge.api.v1alpha1.modeldeployment import wanted_replicas
from tuneforge.config import settings
from tuneforge.controllers import admission, builders, kube
from tuneforge.controllers.children import first
from tuneforge.controllers.settings import ControllerSettings
from tuneforge.controllers.status import set_condition
from tuneforge.controllers.ticker import Ticking, plain
from tuneforge.serving_auth import deployment_token

KIND = "ModelDeployment"
PLURAL = "modeldeployments"


def rollout_phase(summary: dict[str, Any] | None, previous: str | None) -> tuple[str, str]:
    """Phase and reason from the Deployment summary (see the module docstring)."""
    if summary is None:
        return "Deploying", "Creating"
    if summary["desired"] == 0:
        return "Pending", "ScaledToZero"
    if summary["deadline_exceeded"]:
        return "Failed", "ProgressDeadlineExceeded"
    current = (
        summary["observed_generation"] >= summary["generation"]
        and summary["updated"] == summary["desired"]
        and summary["replicas"] == summary["updated"]
    )
    if current and summary["ready"] >= summary["desired"]:
        return "Ready", "PodsReady"
    if current and previous in ("Ready", "Degraded"):
        return "Degraded", "PodsNotReady"
    return "Deploying", "RollingOut"


def _reconcile(raw: dict, status: dict, kwargs: dict[str, Any]) -> dict[str, Any]:
    mdep = ModelDeploymentResource.model_validate(raw)
    name, namespace = raw["metadata"]["name"], raw["metadata"]["namespace"]
    generation = raw["metadata"].get("generation")
    desired = dict(status)
    desired["observedGeneration"] = generation
    previous = status.get("phase")

    def conditions(available: bool, reason: str, message: str) -> None:
        desired["conditions"] = set_condition(
            desired.get("conditions"), "Available", available, reason, message, generation=generation
        )

    name_problem = builders.service_name_problem(name)
    if name_problem is not None:
        desired["phase"] = "Failed"
        conditions(False, "InvalidName", name_problem)
        _event(raw, previous, "Failed", "InvalidName", name_problem)
        return desired

    base_summary = first(kwargs["tf_basemodels"].get(mdep.spec.base_model))
    if base_summary is None or (base_summary["body"].get("status") or {}).get("phase") != "Ready":
        failed = base_summary is not None and (base_summary["body"].get("status") or {}).get("phase") == "Failed"
        desired["phase"] = "Failed" if failed else "Pending"
        reason = "BaseModelInvalid" if failed else "WaitingForBaseModel"
        conditions(False, reason, f"BaseModel {mdep.spec.base_model!r} is not Ready")
        _event(raw, previous, desired["phase"], reason, f"BaseModel {mdep.spec.base_model!r} is not Ready")
        return desired

    base = BaseModelResource.model_validate(base_summary["body"])
    config = settings()
    try:
        hardware = builders.serving_hardware(mdep, base, config)
    except UnknownHardwareProfile as exc:
        desired["phase"] = "Failed"
        conditions(False, "InvalidHardwareProfile", str(exc))
        _event(raw, previous, "Failed", "InvalidHardwareProfile", str(exc))
        return desired
    profile = profile_of(hardware, config)
    serving = builders.serving_spec(mdep, base, hardware=hardware, store_root=config.store_root,
                                    gpu_memory_gb=profile.gpu_memory_gb if profile else None)
    replicas = wanted_replicas(mdep.spec, status)
    deployment = builders.serving_deployment(
        raw, serving, replicas=replicas, hardware=hardware, rollout=mdep.spec.rollout,
        startup_seconds=base.spec.serving.startup_timeout_seconds, settings=config,
    )
    summary = first(kwargs["tf_deployments"].get(("inference", namespace, name)))
    rescaled = mdep.spec.autoscaling is None and summary is not None and summary["desired"] != replicas
    if summary is None or rescaled or summary["hash"] != deployment["metadata"]["annotations"][Annotation.SPEC_HASH]:
        platform_key = kube.platform_serving_key(config.system_namespace)
        token = deployment_token(platform_key, namespace, name, raw["metadata"]["uid"])
        kube.apply(builders.serving_token_secret(raw, token))
        kube.apply(builders.serving_configmap(raw, serving))
        kube.apply(builders.serving_service(raw))
        kube.apply(deployment)
        summary = None  # what the index holds describes the old Deployment
        kopf.info(raw, reason="Applied", message=f"applied Deployment {name} (engine {serving.engine.value})")

    phase, reason = rollout_phase(summary, previous)
    desired["phase"] = phase
    desired["deployment"] = name
    desired["endpoint"] = builders.serving_endpoint(name, namespace)
    desired["servedModels"] = builders.served_models(serving)
    desired["replicas"] = summary["updated"] if summary else 0
    desired["readyReplicas"] = min(summary["ready"], summary["updated"]) if summary else 0
    message = f"{desired['readyReplicas']}/{replicas} Pods of the current spec ready"
    conditions(phase == "Ready", reason, message)
    desired["conditions"] = set_condition(
        desired["conditions"], "Progressing", phase == "Deploying", reason, message, generation=generation
    )
    if summary is not None:  # none right after an apply: whether Pods are refused is not known yet
        desired["conditions"] = admission.recorded(raw, desired["conditions"], summary["replica_failure"],
                                                   what="serving", generation=generation)
    _event(raw, previous, phase, reason, message)
    return desired


def _event(raw: dict, previous: str | None, phase: str, reason: str, message: str) -> None:
    if previous != phase:
        (kopf.warn if phase in ("Failed", "Degraded") else kopf.info)(raw, reason=reason, message=f"{phase}: {message}")


def index(namespace: str, name: str, labels: dict, spec: dict, status: dict, **_: Any) -> dict[Any, Any]:
    """ModelDeployments by (namespace, name), and by namespace for listing what is served."""
    summary = {
        "name": name,
        "namespace": namespace,
        "spec": plain(spec),
        "shared": labels.get(Label.SHARED) == "true",
        "base": spec.get("baseModel"),
        "served": list(status.get("servedModels") or []),
    }
    return {(namespace, name): summary, namespace: summary}


def register(registry: kopf.OperatorRegistry, controller_settings: ControllerSettings, ticking: Ticking) -> None:
    kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="tf_modeldeployments")(index)
    ticking.install(registry, KIND, PLURAL, _reconcile, interval=controller_settings.poll_interval)
