"""What a ModelDeployment owns: its ServingSpec, the Secret holding its serving token, the
serving Deployment (engine plus adapter-loader sidecar) and Service; and the shared
multi-LoRA ModelDeployment a BaseModel may ask for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneforge.api.sizing import profile_of, resolve_hardware, servable_context_length
from tuneforge.api.v1alpha1 import API_VERSION, BaseModelResource, ModelDeploymentResource
from tuneforge.api.v1alpha1.common import Hardware
from tuneforge.api.v1alpha1.labels import OPERATOR_NAME, Annotation, Label, PortName
from tuneforge.api.v1alpha1.modeldeployment import Rollout
from tuneforge.config import Settings
from tuneforge.contracts import RUN_FILE, AdapterSource, Engine, ServingSpec
from tuneforge.controllers.builders.names import (
    serving_configmap_name,
    serving_token_secret_name,
    shared_deployment_name,
)
from tuneforge.controllers.builders.pods import (
    SHM_VOLUME,
    labels_for,
    owned_secret,
    owner_reference,
    placement,
    pod_spec,
    restricted_container,
    run_configmap,
    spec_hash,
    store_access,
    with_image_pull,
    with_shared_memory,
)
from tuneforge.jobfiles import adapter_source_uri
from tuneforge.serving_auth import TOKEN_ENV, TOKEN_SECRET_FIELD

SERVER_CONTAINER = "server"
SERVING_PORT = 8000
ADAPTER_LOADER_PORT = 8001
ADAPTER_LOADER_CONTAINER = "adapter-loader"
ADAPTER_LOADER_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
ROLLOUT_DEADLINE_MARGIN_SECONDS = 600
"""Added to the startup budget for the Deployment's progress deadline: a Pod may wait for
its node and image before the startup probe starts counting."""


def serving_hardware(mdep: ModelDeploymentResource, base: BaseModelResource, settings: Settings) -> Hardware | None:
    return resolve_hardware(mdep.spec.hardware or base.spec.serving.hardware, base.spec.default_hardware, settings)


def serving_spec(
    mdep: ModelDeploymentResource, base: BaseModelResource, *, hardware: Hardware | None, store_root: str,
    gpu_memory_gb: float | None = None,
) -> ServingSpec:
    """The ServingSpec of a ModelDeployment, with the BaseModel's serving defaults filled in;
    the engine serves the base under its model id, the name every API shows. Without a context length from either, a GPU deployment serves the longest context that
    fits the GPUs' memory (`gpu_memory_gb` each, from the hardware profile), so vLLM starts
    rather than refusing a context its KV cache cannot hold."""
    spec = mdep.spec
    defaults = base.spec.serving
    namespace = mdep.metadata["namespace"]
    engine = spec.engine or defaults.engine
    gpus = (hardware.gpu_count or 0) if hardware else 0
    max_model_length = spec.max_model_length or defaults.max_model_length or servable_context_length(
        base.spec.parameter_count, base.spec.max_context_length, gpu_memory_gb=gpu_memory_gb, gpu_count=gpus,
        utilization=ServingSpec.model_fields["gpu_memory_utilization"].default,
    )
    return ServingSpec(
        deployment=mdep.metadata["name"],
        namespace=namespace,
        served_model_name=base.model_id,
        base_model=spec.base_model,
        base_model_uri=base.spec.source.uri,
        engine=Engine(engine.value),
        adapters=[
            AdapterSource(name=a.name, uri=adapter_source_uri(store_root, namespace, a.source)) for a in spec.adapters
        ],
        max_adapters=spec.max_adapters or defaults.max_adapters,
        max_adapter_rank=spec.max_adapter_rank or defaults.max_adapter_rank,
        max_model_length=max_model_length,
        gpu_count=gpus,
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


def serving_token_secret(body: Mapping[str, Any], token: str) -> dict[str, Any]:
    """The Secret handing the deployment's Pods their serving token (tuneforge.serving_auth)."""
    name = body["metadata"]["name"]
    return owned_secret(serving_token_secret_name(name), body, serving_labels(name), {TOKEN_SECRET_FIELD: token})


def serving_deployment(
    body: Mapping[str, Any],
    serving: ServingSpec,
    *,
    replicas: int,
    hardware: Hardware | None,
    rollout: Rollout,
    startup_seconds: int,
    settings: Settings,
) -> dict[str, Any]:
    """The apps/v1 Deployment running `tuneforge-serve` on the serving spec, with the
    adapter-loader sidecar.

    The Pod-template carries the hash of the serving spec without its adapters: a change
    of the spec (which lives in a ConfigMap the Deployment controller does not watch)
    rolls the Pods, but adding or removing adapters does not, since the gateway loads them
    at run time. The Deployment's own hash leaves `replicas` out: the controller compares a
    fixed count itself, and an autoscaled one changes through the scale subresource without
    a re-apply. The rollout never needs spare GPUs by default (`rollout`). The startup
    probe allows `startup_seconds` (the BaseModel's budget) for loading weights; liveness
    only starts after it, so a slow load is not a crash loop.
    """
    name = body["metadata"]["name"]
    namespace = body["metadata"]["namespace"]
    labels = serving_labels(name)
    adapters = [a.uri for a in serving.adapters]
    access = store_access(settings, [serving.base_model_uri, *adapters])
    token = {"name": TOKEN_ENV,
             "valueFrom": {"secretKeyRef": {"name": serving_token_secret_name(name), "key": TOKEN_SECRET_FIELD}}}
    container = {
        "name": SERVER_CONTAINER,
        "image": settings.inference_image,
        "command": ["tuneforge-serve"],
        "args": ["--run", RUN_FILE],
        "env": [*access["env"], token],
        "ports": [{"name": PortName.HTTP, "containerPort": serving.port, "protocol": "TCP"}],
        "startupProbe": _http_probe("/health", period=10, failures=-(-startup_seconds // 10)),
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
    profile = profile_of(hardware, settings)
    # vLLM's processes (API server, engine core, a worker per GPU with tensor parallelism)
    # exchange inputs and NCCL buffers through /dev/shm, whatever the GPU count.
    pod = with_shared_memory(pod, profile.shared_memory if profile else None)
    pod = with_image_pull(_with_adapter_loader(pod, serving, settings.inference_image), settings)
    template_hash = spec_hash(serving.model_dump(mode="json", exclude={"adapters"}))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {Annotation.SPEC_HASH: spec_hash(serving.model_dump(mode="json"), pod,
                                                            rollout.to_wire(), startup_seconds)},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": rollout.max_unavailable,
                                                                     "maxSurge": rollout.max_surge}},
            "progressDeadlineSeconds": startup_seconds + ROLLOUT_DEADLINE_MARGIN_SECONDS,
            "template": {
                "metadata": {"labels": labels, "annotations": {Annotation.SPEC_HASH: template_hash}},
                "spec": pod,
            },
        },
    }


def _with_adapter_loader(pod: dict[str, Any], serving: ServingSpec, image: str) -> dict[str, Any]:
    """The serving Pod plus the adapter-loader sidecar (tuneforge_inference.adapter_loader).

    The gateway sends runtime loads to the port named `adapters`; the sidecar checks the
    caller's token and the adapter's source, copies the adapter into the workload cache
    (the same volume at the same path in both containers) and hands the engine that
    directory. It gets the server's environment and mounts (store access, cache, token),
    so it reads the store as the server would; not /dev/shm, which only the engine uses.
    """
    [server] = pod["containers"]
    loader: dict[str, Any] = restricted_container({
        "name": ADAPTER_LOADER_CONTAINER,
        "image": image,
        "command": ["tuneforge-serve"],
        "args": ["--adapter-loader", "--run", RUN_FILE],
        "env": list(server["env"]),
        "ports": [{"name": PortName.ADAPTERS, "containerPort": serving.adapter_loader_port, "protocol": "TCP"}],
        "readinessProbe": _http_probe("/health", period=5, failures=3, port=PortName.ADAPTERS),
        "resources": ADAPTER_LOADER_RESOURCES,
        "volumeMounts": [mount for mount in server["volumeMounts"] if mount["name"] != SHM_VOLUME],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
    if "envFrom" in server:
        loader["envFrom"] = server["envFrom"]
    return {**pod, "containers": [server, loader]}


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
        **({"autoscaling": serving.autoscaling.to_wire()} if serving.autoscaling else {}),
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