"""Pure functions that turn tuneforge resources into the Kubernetes objects they own.

Nothing here talks to the API server or the artifact store, so every rendered object is
unit-tested without a cluster and the handlers stay thin: they gather the inputs (the
resource, its BaseModel, resolved URIs), call a builder, and create what it returns.

Names are deterministic (derived from the owner's name only), so an operator that
restarts half-way through a reconcile finds what it already created instead of creating
a duplicate; a create that answers 409 means "already done".
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from tuneforge.api.sizing import TrainingSize, resolve_hardware
from tuneforge.api.v1alpha1 import (
    API_VERSION,
    BaseModelResource,
    BatchJobResource,
    FineTuningJobResource,
    ModelDeploymentResource,
)
from tuneforge.api.v1alpha1.common import MAX_NODES, Hardware
from tuneforge.api.v1alpha1.finetuningjob import JOB_NAME_PREFIX, DistributedStrategy, fine_tuned_model_id
from tuneforge.api.v1alpha1.labels import OPERATOR_NAME, Annotation, Label, PortName
from tuneforge.config import HardwareProfile, Settings, find_hardware_profile
from tuneforge.contracts import (
    RENDEZVOUS_PORT,
    RUN_FILE,
    AdapterSource,
    BatchRun,
    CheckpointSettings,
    DistributedSettings,
    Engine,
    LoraSettings,
    ServingSpec,
    TrainerExit,
    TrainingHyperparameters,
    TrainingRun,
)
from tuneforge.storage import is_object_store

TRAINER_CONTAINER = "trainer"
SERVER_CONTAINER = "server"
RUNNER_CONTAINER = "runner"
RUN_VOLUME = "run"
RUN_DIR = posixpath.dirname(RUN_FILE)
RUN_KEY = posixpath.basename(RUN_FILE)
SERVING_PORT = 8000
ADAPTER_LOADER_PORT = 8001
ADAPTER_LOADER_CONTAINER = "adapter-loader"
ADAPTER_CACHE_VOLUME = "adapter-cache"
ADAPTER_CACHE_DIR = "/var/cache/tuneforge"
ADAPTER_LOADER_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
STORE_CREDENTIALS_SECRET = "tuneforge-store-credentials"
BATCH_KEY_ENV = "TUNEFORGE_BATCH_API_KEY"

FATAL_EXIT_CODES = (int(TrainerExit.fatal), int(TrainerExit.usage))
"""Exit codes of the images' own errors (the trainer's TrainerExit.fatal for bad data or a
bad run spec, argparse's usage error; the batch runner follows the same convention):
retrying cannot fix bad data or a bad spec, so the Job fails at once. Other exits (OOM
kill 137, node trouble, TrainerExit.retryable) count against `backoffLimit`, and a Pod
evicted by a disruption (preemption, drain) is retried without counting at all."""
TRAINER_BACKOFF_LIMIT = 3
BATCH_BACKOFF_LIMIT = 3
TRAINER_GRACE_SECONDS = 120
"""SIGTERM to SIGKILL: time for the trainer to write a last checkpoint when paused."""
SHM_VOLUME = "dshm"
SHM_DIR = "/dev/shm"
DEFAULT_SHARED_MEMORY = "2Gi"
"""/dev/shm of a multi-process trainer Pod whose profile names no size: enough for NCCL's
shared-memory transport between eight local processes and the data loader; the 64 MiB a
container gets otherwise is too small for NCCL's buffers."""
USABLE_GPU_MEMORY = 0.9
"""Share of a GPU's memory training may plan on; the rest goes to the CUDA context, the
allocator's fragmentation and the small LoRA gradients and optimizer states."""

MODEL_LOAD_TIMEOUT_SECONDS = 1800
"""How long a serving Pod may take to load its weights before it counts as failed: big
models on vLLM take minutes (download, dequantize, CUDA graphs), so the startup probe
allows half an hour while readiness and liveness stay quick once it has started."""

COMPLETION_WINDOWS = {"1h": 1, "3h": 3, "6h": 6, "12h": 12, "24h": 24}

_MAX_NAME = 63


# -- names -------------------------------------------------------------------------------


def child_name(owner: str, suffix: str, limit: int = _MAX_NAME) -> str:
    """`<owner>-<suffix>`, shortened with a hash when it would exceed `limit`, by default 63
    characters (the limit of label values such as the `job-name` label the Job controller
    adds)."""
    name = f"{owner}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-')}-{digest}-{suffix}"


def trainer_job_name(ftjob: str) -> str:
    """Short enough that `<name>-<index>`, the hostname the Job controller gives each Pod of
    an Indexed Job, stays a DNS label for the largest group."""
    return child_name(ftjob, "trainer", limit=_MAX_NAME - len(f"-{MAX_NODES - 1}"))


def trainer_configmap_name(ftjob: str) -> str:
    return child_name(ftjob, "run")


def trainer_service_name(ftjob: str) -> str:
    """The headless Service of a multi-node trainer, the DNS subdomain of its Pods."""
    return child_name(ftjob, "trainers")


def rendezvous_host(ftjob: str) -> str:
    """Node 0 of a multi-node trainer: an Indexed Job's Pod `i` is named `<job>-<i>` in DNS
    under the Job's subdomain, resolvable from the Pods' own namespace."""
    return f"{trainer_job_name(ftjob)}-0.{trainer_service_name(ftjob)}"


def serving_configmap_name(mdep: str) -> str:
    return child_name(mdep, "serving")


def runner_job_name(batch: str) -> str:
    return child_name(batch, "runner")


def runner_configmap_name(batch: str) -> str:
    return child_name(batch, "run")


def batch_key_secret_name(batch: str) -> str:
    return child_name(batch, "api-key")


def shared_deployment_name(base_model: str) -> str:
    """The shared multi-LoRA ModelDeployment of a BaseModel is named after it."""
    return base_model



def batch_file_ids(namespace: str, batch: str) -> tuple[str, str]:
    """The output and error file ids a batch's runner registers its results under.

    Derived from the batch alone, so a restarted runner (or controller) names the same
    Files and never leaves orphans behind.
    """
    digest = hashlib.sha256(f"{namespace}/{batch}".encode()).hexdigest()
    return f"file-{digest[:24]}", f"file-{digest[24:48]}"


def expires_at(created: datetime, completion_window: str) -> datetime:
    return created + timedelta(hours=COMPLETION_WINDOWS[completion_window])


# -- shared pieces -----------------------------------------------------------------------


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    """The controller ownerReference to `body`: garbage collection deletes the child with
    its owner, and `kubectl get` shows who made it."""
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels_for(component: str, owner_label: str, owner: str) -> dict[str, str]:
    return {Label.MANAGED_BY: OPERATOR_NAME, Label.COMPONENT: component, owner_label: owner}


def spec_hash(*objects: Any) -> str:
    """A short stable hash of JSON-able objects, to tell whether a child is out of date."""
    data = json.dumps(objects, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def store_uri(root: str, *parts: str) -> str:
    return posixpath.join(root.rstrip("/"), *parts)


def _pvc_claims(uris: Iterable[str | None]) -> list[str]:
    claims = []
    for uri in uris:
        if uri and uri.startswith("pvc://"):
            claim = uri[len("pvc://"):].partition("/")[0]
            if claim and claim not in claims:
                claims.append(claim)
    return claims


def _volume_name(prefix: str, value: str) -> str:
    clean = re.sub(r"[^a-z0-9-]", "-", value.lower()).strip("-")
    name = f"{prefix}-{clean}"
    if len(name) > _MAX_NAME:
        name = f"{prefix}-{hashlib.sha256(value.encode()).hexdigest()[:16]}"
    return name


def store_access(settings: Settings, uris: Iterable[str | None]) -> dict[str, Any]:
    """Volumes, mounts and environment that give a Pod the artifact store and the URIs it
    reads: each PVC named by a pvc:// URI is mounted where `pvc_mount_root` expects it;
    s3:// needs credentials, taken from an optional Secret in the workload's namespace (or
    from the node's / service account's identity when it is absent)."""
    all_uris = [settings.store_root, *uris]
    volumes, mounts = [], []
    for claim in _pvc_claims(all_uris):
        name = _volume_name("pvc", claim)
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": name, "mountPath": str(settings.pvc_mount_root / claim)})
    env = [
        {"name": "TUNEFORGE_STORE_ROOT", "value": settings.store_root},
        {"name": "TUNEFORGE_PVC_MOUNT_ROOT", "value": str(settings.pvc_mount_root)},
        # The operator's own store retry settings: a workload rides out the same faults.
        {"name": "TUNEFORGE_STORE_RETRY_ATTEMPTS", "value": str(settings.store_retry_attempts)},
        {"name": "TUNEFORGE_STORE_RETRY_MODE", "value": settings.store_retry_mode},
        {"name": "TUNEFORGE_STORE_RETRY_DEADLINE_S", "value": str(settings.store_retry_deadline_s)},
    ]
    env_from = []
    if any(uri and is_object_store(uri) for uri in all_uris):
        env_from.append({"secretRef": {"name": STORE_CREDENTIALS_SECRET, "optional": True}})
    return {"volumes": volumes, "mounts": mounts, "env": env, "env_from": env_from}


def placement(hardware: Hardware | None) -> dict[str, Any]:
    """Container resources, node selector and tolerations for a hardware request: GPUs
    become `nvidia.com/gpu` limits, the GPU type a node-selector on the GPU operator's
    product label, and GPU nodes' usual taint is tolerated."""
    hardware = hardware or Hardware()
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if hardware.requests:
        requests.update(hardware.requests.to_wire())
    if hardware.limits:
        limits.update(hardware.limits.to_wire())
    node_selector = dict(hardware.node_selector or {})
    tolerations = [t.to_wire() for t in hardware.tolerations or []]
    gpus = hardware.gpu_count or 0
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        if hardware.gpu_type:
            node_selector[GPU_PRODUCT_LABEL] = hardware.gpu_type
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return {"resources": resources, "node_selector": node_selector, "tolerations": tolerations}


def run_configmap(
    name: str, namespace: str, owner: Mapping[str, Any], labels: dict[str, str], contract_json: str
) -> dict[str, Any]:
    """A ConfigMap holding one run spec under the key the images read (`run.json`)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "data": {RUN_KEY: contract_json},
    }


def _pod_spec(
    *,
    container: dict[str, Any],
    configmap: str,
    access: dict[str, Any],
    place: dict[str, Any],
    restart_policy: str,
    grace_seconds: int,
) -> dict[str, Any]:
    container = {
        **container,
        "volumeMounts": [{"name": RUN_VOLUME, "mountPath": RUN_DIR, "readOnly": True}, *access["mounts"]],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if place["resources"]:
        container["resources"] = place["resources"]
    if access["env_from"]:
        container["envFrom"] = access["env_from"]
    pod: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": grace_seconds,
        "containers": [container],
        "volumes": [{"name": RUN_VOLUME, "configMap": {"name": configmap}}, *access["volumes"]],
    }
    if place["node_selector"]:
        pod["nodeSelector"] = place["node_selector"]
    if place["tolerations"]:
        pod["tolerations"] = place["tolerations"]
    return pod


def _pod_failure_policy(container: str) -> dict[str, Any]:
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            _fail_on_exit_codes(container, "In", FATAL_EXIT_CODES),
        ]
    }


def _group_failure_policy(container: str) -> dict[str, Any]:
    """A multi-node group fails as a whole: the Job fails on any Pod failure (the Job
    controller then stops the other Pods) and the FineTuningJob controller replaces the
    whole group, telling a disruption (not counted against the budget) and a fatal exit
    (no replacement) from the rest by the rule that matched. Retrying one Pod in place
    would leave the others waiting in a broken collective."""
    return {
        "rules": [
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
            _fail_on_exit_codes(container, "In", FATAL_EXIT_CODES),
            _fail_on_exit_codes(container, "NotIn", (int(TrainerExit.succeeded),)),
        ]
    }


def _fail_on_exit_codes(container: str, operator: str, codes: Iterable[int]) -> dict[str, Any]:
    return {"action": "FailJob", "onExitCodes": {"containerName": container, "operator": operator, "values": list(codes)}}


# -- fine-tuning -------------------------------------------------------------------------


def training_run(
    ftjob: FineTuningJobResource,
    base: BaseModelResource,
    *,
    training_uri: str,
    validation_uri: str | None,
    store_root: str,
    distributed: DistributedSettings,
) -> TrainingRun:
    """The TrainingRun contract for a validated FineTuningJob."""
    name, namespace = ftjob.metadata["name"], ftjob.metadata["namespace"]
    spec = ftjob.spec
    lora = spec.method.lora
    hp = spec.hyperparameters
    return TrainingRun(
        job_id=name,
        namespace=namespace,
        base_model=spec.base_model,
        base_model_uri=base.spec.source.uri,
        training_file=training_uri,
        validation_file=validation_uri,
        output_uri=store_uri(store_root, namespace, "fine-tuning", name),
        fine_tuned_model=fine_tuned_model_id(spec.base_model, namespace, spec.suffix, name),
        lora=LoraSettings(
            rank=lora.rank,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=lora.target_modules or "all-linear",
            quantize_4bit=lora.quantization.value == "nf4",
        ),
        hyperparameters=TrainingHyperparameters(
            n_epochs=hp.n_epochs,
            batch_size=hp.batch_size,
            learning_rate_multiplier=hp.learning_rate_multiplier,
            warmup_ratio=hp.warmup_ratio,
            warmup_steps=hp.warmup_steps,
            lr_scheduler=hp.lr_scheduler,
            max_seq_length=hp.max_seq_length,
            seed=hp.seed,
            gradient_checkpointing=hp.gradient_checkpointing,
            micro_batch_size=hp.micro_batch_size,
            attention=hp.attention.value,
        ),
        checkpoints=CheckpointSettings(
            every_n_steps=spec.checkpoints.every_n_steps, keep_last=spec.checkpoints.keep_last
        ),
        merge_adapter=spec.merge_adapter,
        distributed=distributed,
    )


def training_memory_bytes(parameter_count: int, max_seq_length: int, micro_batch_size: int = 1) -> float:
    """GPU memory one process needs to train a LoRA adapter on an unsharded bf16 model:

        weights      = 2 bytes x P
        width h      = (128 x P / 12) ^ (1/3)   (P = 12 L h^2 with depth L = h / 128, as in
                                                 Llama-class models)
        activations  = 34 x L x h bytes per token (Korthikanti et al. 2022, 16-bit, flash
                       attention) = 34 x P / (12 h), times maxSeqLength x microBatchSize

    Only the parameter count is known of a catalog model, hence the shape assumption; LoRA's
    own weights, gradients and optimizer states are a fraction of a percent of P and are
    left to the USABLE_GPU_MEMORY margin. Gradient checkpointing would cut the activations,
    so the estimate errs towards sharding, the choice that still trains."""
    width = (128 * parameter_count / 12) ** (1 / 3)
    activations_per_token = 34 * parameter_count / (12 * width)
    return 2 * parameter_count + activations_per_token * max_seq_length * micro_batch_size


def fits_one_gpu(parameter_count: int | None, gpu_memory_gb: float | None, max_seq_length: int,
                 micro_batch_size: int = 1) -> bool:
    """Whether a whole model copy trains on one GPU; True when either size is unknown, since
    ddp is the safe default for the small models that usually leave them out."""
    if not parameter_count or not gpu_memory_gb:
        return True
    needed = training_memory_bytes(parameter_count, max_seq_length, micro_batch_size)
    return needed <= USABLE_GPU_MEMORY * gpu_memory_gb * 2**30


def resolve_distributed(ftjob: FineTuningJobResource, base: BaseModelResource, size: TrainingSize) -> DistributedSettings:
    """The run's DistributedSettings for a job whose size passed `size_training`: the
    strategy with `auto` decided, Pods and processes, and node 0 as rendezvous when the
    group spans Pods."""
    name = ftjob.metadata["name"]
    return DistributedSettings(
        strategy=_strategy(ftjob, base, size),
        nodes=size.nodes,
        processes_per_node=size.processes_per_node,
        rendezvous_host=rendezvous_host(name) if size.nodes > 1 else None,
        rendezvous_port=RENDEZVOUS_PORT,
    )


def _strategy(ftjob: FineTuningJobResource, base: BaseModelResource, size: TrainingSize) -> str:
    """auto shards (fsdp) only when there is more than one process to shard across, the
    base is not 4-bit (fsdp cannot shard it) and a whole copy would not fit one GPU."""
    spec = ftjob.spec
    if spec.distributed.strategy is not DistributedStrategy.auto:
        return spec.distributed.strategy.value
    if size.world_size == 1 or spec.method.lora.quantization.value == "nf4":
        return "ddp"
    hp = spec.hyperparameters
    gpu_memory = size.profile.gpu_memory_gb if size.profile and size.gpus_per_node else None
    fits = fits_one_gpu(base.spec.parameter_count, gpu_memory, hp.max_seq_length, hp.micro_batch_size or 1)
    return "ddp" if fits else "fsdp"


def trainer_labels(ftjob: str) -> dict[str, str]:
    return labels_for("trainer", Label.FINE_TUNING_JOB, ftjob)


def trainer_configmap(body: Mapping[str, Any], run: TrainingRun) -> dict[str, Any]:
    name = body["metadata"]["name"]
    return run_configmap(
        trainer_configmap_name(name), body["metadata"]["namespace"], body, trainer_labels(name), run.dump()
    )


def trainer_job(
    body: Mapping[str, Any],
    run: TrainingRun,
    *,
    hardware: Hardware | None,
    queue_name: str | None,
    settings: Settings,
) -> dict[str, Any]:
    """The batch/v1 Job that runs `tuneforge-train` on the run spec.

    Pods are never restarted in place (restartPolicy Never, which podFailurePolicy needs).
    One Pod: the Job retries a Pod lost to a disruption without counting it and fails at
    once on the trainer's own errors. A group of `run.distributed.nodes` Pods is an Indexed
    Job (see `_group`) that fails as a whole for the controller to replace. With a Kueue
    queue the Job starts suspended and labelled, and Kueue unsuspends it on admission.
    Resuming after a pause is a new Job with the same name; the trainer continues from the
    newest checkpoint in its output dir.
    """
    name = body["metadata"]["name"]
    labels = trainer_labels(name)
    job_labels = dict(labels)
    if queue_name:
        job_labels[Label.KUEUE_QUEUE] = queue_name
    access = store_access(settings, [run.base_model_uri, run.training_file, run.validation_file, run.output_uri])
    profile = find_hardware_profile(settings, hardware.profile) if hardware and hardware.profile else None
    container = {
        "name": TRAINER_CONTAINER,
        "image": settings.trainer_image,
        "command": ["tuneforge-train"],
        "args": ["--run", RUN_FILE],
        "env": [*access["env"], *_profile_env(profile)],
    }
    pod = _pod_spec(
        container=container,
        configmap=trainer_configmap_name(name),
        access=access,
        place=placement(hardware),
        restart_policy="Never",
        grace_seconds=TRAINER_GRACE_SECONDS,
    )
    if run.distributed.world_size > 1:
        pod = _with_shared_memory(pod, profile.shared_memory if profile else None)
    spec: dict[str, Any] = {
        "suspend": bool(queue_name),
        "backoffLimit": TRAINER_BACKOFF_LIMIT,
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": _pod_failure_policy(TRAINER_CONTAINER),
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    if run.distributed.nodes > 1:
        spec = _group(spec, name, run.distributed.nodes)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": trainer_job_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": job_labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": spec,
    }


def _profile_env(profile: HardwareProfile | None) -> list[dict[str, str]]:
    return [{"name": key, "value": value} for key, value in sorted((profile.env if profile else {}).items())]


def _with_shared_memory(pod: dict[str, Any], size: str | None) -> dict[str, Any]:
    """A memory-backed /dev/shm for Pods running several processes: NCCL's intra-node
    transport and data loader workers share memory there, and a container's own /dev/shm
    is only 64 MiB. It counts against the Pod's memory, hence the size limit."""
    [container] = pod["containers"]
    mount = {"name": SHM_VOLUME, "mountPath": SHM_DIR}
    volume = {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": size or DEFAULT_SHARED_MEMORY}}
    return {
        **pod,
        "containers": [{**container, "volumeMounts": [*container["volumeMounts"], mount]}],
        "volumes": [*pod["volumes"], volume],
    }


def _group(spec: dict[str, Any], ftjob: str, nodes: int) -> dict[str, Any]:
    """The Job spec of a group of `nodes` trainer Pods: an Indexed Job (each Pod gets its
    node rank as JOB_COMPLETION_INDEX and the hostname `<job>-<rank>` under the headless
    Service's subdomain, so node 0 is the rendezvous host), all Pods running at once, and
    any failure failing the whole Job (backoffLimit 0 for failures no rule names) so the
    controller replaces the group rather than one Pod of it."""
    template = spec["template"]
    [container] = template["spec"]["containers"]
    port = {"name": PortName.RENDEZVOUS, "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}
    pod = {
        **template["spec"],
        "subdomain": trainer_service_name(ftjob),
        "containers": [{**container, "ports": [port]}],
    }
    return {
        **spec,
        "backoffLimit": 0,
        "completions": nodes,
        "parallelism": nodes,
        "completionMode": "Indexed",
        "podFailurePolicy": _group_failure_policy(TRAINER_CONTAINER),
        "template": {**template, "spec": pod},
    }


def trainer_service(body: Mapping[str, Any]) -> dict[str, Any]:
    """The headless Service of a multi-node trainer: it gives each Pod of the Indexed Job a
    DNS name, and node 0's is the rendezvous host. It publishes Pods that are not ready
    (the trainer has no readiness probe, and the Pods must find each other before any of
    them is up). Owned by the FineTuningJob, not the Job, so it outlives group restarts."""
    name = body["metadata"]["name"]
    labels = trainer_labels(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": trainer_service_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels,
            "ports": [{"name": PortName.RENDEZVOUS, "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                       "protocol": "TCP"}],
        },
    }


# -- serving -----------------------------------------------------------------------------


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
    pod = _pod_spec(
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


# -- batches -----------------------------------------------------------------------------


def batch_run(
    batch: BatchJobResource,
    *,
    input_uri: str,
    expires: datetime,
    served: list[str] | None,
    settings: Settings,
) -> BatchRun:
    name, namespace = batch.metadata["name"], batch.metadata["namespace"]
    output_id, error_id = batch_file_ids(namespace, name)
    return BatchRun(
        batch_id=name,
        namespace=namespace,
        input_uri=input_uri,
        endpoint=batch.spec.endpoint.value,
        output_uri=store_uri(settings.store_root, namespace, "batches", name),
        store_root=settings.store_root,
        target_base_url=settings.gateway_internal_url,
        api_key_env=BATCH_KEY_ENV,
        expires_at=expires,
        served_models=served,
        output_file_id=output_id,
        error_file_id=error_id,
        concurrency=batch.spec.concurrency,
    )


def runner_labels(batch: str) -> dict[str, str]:
    return labels_for("batch-runner", Label.BATCH_JOB, batch)


def runner_configmap(body: Mapping[str, Any], run: BatchRun) -> dict[str, Any]:
    name = body["metadata"]["name"]
    return run_configmap(
        runner_configmap_name(name), body["metadata"]["namespace"], body, runner_labels(name), run.dump()
    )


def batch_key_secret(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The Secret in the batch's namespace that hands the runner its chat-scoped key (the
    key's hash lives in the system namespace, see tuneforge.apikeys)."""
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": batch_key_secret_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": runner_labels(name),
            "ownerReferences": [owner_reference(body)],
        },
        "stringData": {BATCH_KEY_ENV: key},
    }


def runner_job(body: Mapping[str, Any], run: BatchRun, *, settings: Settings) -> dict[str, Any]:
    """The batch/v1 Job running `tuneforge-batch`. The runner checkpoints every finished
    request, so a retried Pod continues where the last stopped; activeDeadlineSeconds
    backs up the runner's own expiry handling with the completion window plus grace."""
    name = body["metadata"]["name"]
    labels = runner_labels(name)
    access = store_access(settings, [run.input_uri, run.output_uri])
    env = [
        *access["env"],
        {
            "name": BATCH_KEY_ENV,
            "valueFrom": {"secretKeyRef": {"name": batch_key_secret_name(name), "key": BATCH_KEY_ENV}},
        },
    ]
    container = {
        "name": RUNNER_CONTAINER,
        "image": settings.inference_image,
        "command": ["tuneforge-batch"],
        "args": ["--run", RUN_FILE],
        "env": env,
    }
    window = COMPLETION_WINDOWS[body["spec"].get("completionWindow", "24h")] * 3600
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": runner_job_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "backoffLimit": BATCH_BACKOFF_LIMIT,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": window + int(run.cancel_grace_s) + 300,
            "podFailurePolicy": _pod_failure_policy(RUNNER_CONTAINER),
            "template": {
                "metadata": {"labels": labels},
                "spec": _pod_spec(
                    container=container,
                    configmap=runner_configmap_name(name),
                    access=access,
                    place=placement(None),
                    restart_policy="Never",
                    grace_seconds=int(run.cancel_grace_s) + 10,
                ),
            },
        },
    }
