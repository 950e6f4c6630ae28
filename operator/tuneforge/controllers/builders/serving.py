"""What a ModelDeployment owns: its ServingSpec, the serving Deployment (with the
adapter-loader sidecar on an object store) and Service; and the shared multi-LoRA
ModelDeployment a BaseModel may ask for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneforge.api.sizing import resolve_hardware
from tuneforge.api.v1alpha1 import API_VERSION, BaseModelResource, ModelDeploymentResource
from tuneforge.api.v1alpha1.common import Hardware
from tuneforge.api.v1alpha1.finetuningjob import JOB_NAME_PREFIX
from tuneforge.api.v1alpha1.labels import OPERATOR_NAME, Annotation, Label, PortName
from tuneforge.config import Settings
from tuneforge.contracts import RUN_FILE, AdapterSource, Engine, ServingSpec
from tuneforge.controllers.builders.names import serving_configmap_name, shared_deployment_name
from tuneforge.controllers.builders.pods import (
    labels_for,
    owner_reference,
    placement,
    pod_spec,
    run_configmap,
    spec_hash,
    store_access,
    store_uri,
)
from tuneforge.storage import is_object_store

SERVER_CONTAINER = "server"
SERVING_PORT = 8000
ADAPTER_LOADER_PORT = 8001
ADAPTER_LOADER_CONTAINER = "adapter-loader"
ADAPTER_CACHE_VOLUME = "adapter-cache"
ADAPTER_CACHE_DIR = "/var/cache/tuneforge"
ADAPTER_LOADER_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}

MODEL_LOAD_TIMEOUT_SECONDS = 1800
"""How long a serving Pod may take to load its weights before it counts as failed: big
models on vLLM take minutes (download, dequantize, CUDA graphs), so the startup probe
allows half an hour while readiness and liveness stay quick once it has started."""


def adapter_uri(store_root: str, namespace: str, source: str) -> str:
    """An adapter source as a URI: a FineTuningJob name is its adapter directory in the
    store (where the trainer writes it), any other value is already a URI."""
    if source.startswith(JOB_NAME_PREFIX):
        return store_uri(store_root, namespace, "fine-tuning", source, "adapter")
    return source


def serving_hardware(mdep: ModelDeploymentResource, base: BaseModelResource, settings: Settings) -> Hardware | None:
    return resolve_hardware(mdep.spec.hardware or base.spec.serving.hardware, base.spec.default_hardware, settings)


def serving_spec(
    mdep: ModelDeploymentResource, base: BaseModelResource, *, hardware: Hardware | None, store_root: str
) -> ServingSpec:
    """The ServingSpec of a ModelDeployment, with the BaseModel's serving defaults filled in."""
    spec = mdep.spec
    defaults = base.spec.serving
    namespace = mdep.metadata["namespace"]
    engine = spec.engine or defaults.engine
    return ServingSpec(
        deployment=mdep.metadata["name"],
        namespace=namespace,
        served_model_name=spec.base_model,
        base_model_uri=base.spec.source.uri,
        engine=Engine(engine.value),
        adapters=[
            AdapterSource(name=a.name, uri=adapter_uri(store_root, namespace, a.source)) for a in spec.adapters
        ],
        max_adapters=spec.max_adapters or defaults.max_adapters,
        max_adapter_rank=spec.max_adapter_rank or defaults.max_adapter_rank,
        max_model_length=spec.max_model_length or defaults.max_model_length or base.spec.max_context_length,
        gpu_count=(hardware.gpu_count or 0) if hardware else 0,
        port=SERVING_PORT,
        adapter_loader_port=ADAPTER_LOADER_PORT,
        engine_args=spec.engine_args or defaults.engine_args,
    )


def served_models(serving: ServingSpec) -> list[str]:
    return [serving.served_model_name, *(a.name for a in serving.adapters)]


def serving_labels(mdep: str) -> dict[str, str]:
    return labels_for("inference", Label.MODEL_DEPLOYMENT, mdep)


def serving_endpoint(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc:{SERVING_PORT}/v1"


def serving_configmap(body: Mapping[str, Any], serving: ServingSpec) -> dict[str, Any]:
    name = body["metadata"]["name"]
    return run_configmap(
        serving_configmap_name(name), body["metadata"]["namespace"], body, serving_labels(name), serving.dump()
    )


def _http_probe(
    path: str, *, period: int, failures: int, timeout: int = 5, port: str = PortName.HTTP
) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def serving_deployment(
    body: Mapping[str, Any], serving: ServingSpec, *, replicas: int, hardware: Hardware | None, settings: Settings
) -> dict[str, Any]:
    """The apps/v1 Deployment running `tuneforge-serve` on the serving spec.

    The spec's hash is a Pod-template annotation, so any change of the serving spec (which
    lives in a ConfigMap the Deployment controller does not watch) rolls the Pods. Rolling
    updates bring a new Pod up before an old one goes (maxUnavailable 0), so a model
    change never drops capacity. The startup probe allows MODEL_LOAD_TIMEOUT_SECONDS for
    loading weights; liveness only starts after it, so a slow load is not a crash loop.
    """
    name = body["metadata"]["name"]
    namespace = body["metadata"]["namespace"]
    labels = serving_labels(name)
    adapters = [a.uri for a in serving.adapters]
    access = store_access(settings, [serving.base_model_uri, *adapters])
    container = {
        "name": SERVER_CONTAINER,
        "image": settings.inference_image,
        "command": ["tuneforge-serve"],
        "args": ["--run", RUN_FILE],
        "env": access["env"],
        "ports": [{"name": PortName.HTTP, "containerPort": serving.port, "protocol": "TCP"}],
        "startupProbe": _http_probe("/health", period=10, failures=MODEL_LOAD_TIMEOUT_SECONDS // 10),
        "readinessProbe": _http_probe("/health", period=5, failures=3),
        "livenessProbe": _http_probe("/health", period=15, failures=4, timeout=10),
    }
    pod = pod_spec(
        container=container,
        configmap=serving_configmap_name(name),
        access=access,
        place=placement(hardware),
        restart_policy="Always",
        grace_seconds=60,
    )
    if serving.engine is Engine.vllm and is_object_store(settings.store_root):
        pod = _with_adapter_loader(pod, serving, settings.inference_image)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {Annotation.SPEC_HASH: spec_hash(serving.model_dump(mode="json"), replicas, pod)},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "progressDeadlineSeconds": MODEL_LOAD_TIMEOUT_SECONDS + 600,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {Annotation.SPEC_HASH: spec_hash(serving.model_dump(mode="json"))},
                },
                "spec": pod,
            },
        },
    }


def _with_adapter_loader(pod: dict[str, Any], serving: ServingSpec, image: str) -> dict[str, Any]:
    """The serving Pod plus the adapter-loader sidecar and the cache both containers mount.

    vLLM loads adapters from local paths only, and on an object store fine-tuned adapters
    exist only in the bucket. The gateway sends runtime loads to the port named `adapters`
    when a Pod declares one; the sidecar copies the adapter into the shared emptyDir (same
    path in both containers) and hands vLLM that directory. It gets the server's store
    environment and mounts, so it reads the store with the same credentials.
    """
    cache_env = {"name": "TUNEFORGE_CACHE_DIR", "value": ADAPTER_CACHE_DIR}
    cache_mount = {"name": ADAPTER_CACHE_VOLUME, "mountPath": ADAPTER_CACHE_DIR}
    [server] = pod["containers"]
    server = {**server, "env": [*server["env"], cache_env], "volumeMounts": [*server["volumeMounts"], cache_mount]}
    loader: dict[str, Any] = {
        "name": ADAPTER_LOADER_CONTAINER,
        "image": image,
        "command": ["tuneforge-serve"],
        "args": ["--adapter-loader", "--run", RUN_FILE],
        "env": list(server["env"]),
        "ports": [{"name": PortName.ADAPTERS, "containerPort": serving.adapter_loader_port, "protocol": "TCP"}],
        "readinessProbe": _http_probe("/health", period=5, failures=3, port=PortName.ADAPTERS),
        "resources": ADAPTER_LOADER_RESOURCES,
        "volumeMounts": list(server["volumeMounts"]),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if "envFrom" in server:
        loader["envFrom"] = list(server["envFrom"])
    return {
        **pod,
        "containers": [server, loader],
        "volumes": [*pod["volumes"], {"name": ADAPTER_CACHE_VOLUME, "emptyDir": {}}],
    }


def serving_service(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Service in front of the serving Pods (the in-cluster endpoint in status; the
    gateway itself routes to Pod IPs)."""
    name = body["metadata"]["name"]
    labels = serving_labels(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": body["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "selector": labels,
            "ports": [{"name": PortName.HTTP, "port": SERVING_PORT, "targetPort": PortName.HTTP, "protocol": "TCP"}],
        },
    }


def shared_deployment(base_body: Mapping[str, Any], base: BaseModelResource, namespace: str) -> dict[str, Any]:
    """The shared multi-LoRA ModelDeployment of a catalog model: fine-tuned models of this
    base are loaded into it at runtime by the gateway, so they serve with no deploy step.
    Owned by the (cluster-scoped) BaseModel, so removing the catalog entry removes it."""
    name = base.metadata["name"]
    serving = base.spec.serving
    spec: dict[str, Any] = {
        "baseModel": name,
        "engine": serving.engine.value,
        "replicas": serving.replicas,
        "maxAdapters": serving.max_adapters,
        "maxAdapterRank": serving.max_adapter_rank,
        "engineArgs": list(serving.engine_args),
    }
    if serving.max_model_length:
        spec["maxModelLength"] = serving.max_model_length
    if serving.hardware:
        spec["hardware"] = serving.hardware.to_wire()
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {
            "name": shared_deployment_name(name),
            "namespace": namespace,
            "labels": {Label.MANAGED_BY: OPERATOR_NAME, Label.BASE_MODEL: name, Label.SHARED: "true"},
            "ownerReferences": [owner_reference(base_body)],
        },
        "spec": spec,
    }