"""The pieces every owned object and workload Pod shares: ownership, labels, the artifact
store's volumes and environment, GPU placement and memory, the run-spec ConfigMap, and
what admits a Pod under the Pod Security "restricted" profile: a non-root user, no
privilege escalation or capabilities, the runtime's seccomp profile, a read-only root
filesystem with emptyDirs for what the images write, and no service account token."""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any

from tuneforge.api.v1alpha1 import API_VERSION
from tuneforge.api.v1alpha1.common import MAX_LABEL_LENGTH, Hardware
from tuneforge.api.v1alpha1.labels import OPERATOR_NAME, Label
from tuneforge.config import DEFAULT_POD_MEMORY, Settings
from tuneforge.contracts import RUN_FILE, TrainerExit
from tuneforge.storage import is_object_store

RUN_VOLUME = "run"
RUN_DIR = posixpath.dirname(RUN_FILE)
RUN_KEY = posixpath.basename(RUN_FILE)
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
STORE_CREDENTIALS_SECRET = "tuneforge-store-credentials"
WORKLOAD_UID = 10001
"""The uid and gid of the user the trainer and inference images create and run as: the Pod
names it, so the restricted profile's runAsNonRoot is checked against a number."""
TMP_VOLUME = "tmp"
TMP_DIR = "/tmp"
CACHE_VOLUME = "cache"
CACHE_DIR = "/var/cache"
"""Where workload Pods keep what they may lose with the Pod: weights copied from the store
or dequantized from GGUF, fetched adapters, the batch journal of an object store, and the
caches of Hugging Face, torch, Triton and vLLM. One emptyDir over /var/cache, so the
inference image's own TUNEFORGE_CACHE_DIR (/var/cache/tuneforge) lies inside it."""
CACHE_ENV = {
    "TUNEFORGE_CACHE_DIR": f"{CACHE_DIR}/tuneforge",
    "XDG_CACHE_HOME": CACHE_DIR,
    "HF_HOME": f"{CACHE_DIR}/huggingface",
    "TORCH_HOME": f"{CACHE_DIR}/torch",
    "TORCHINDUCTOR_CACHE_DIR": f"{CACHE_DIR}/torchinductor",
    "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
}
"""Every cache the images' libraries write, pointed into the cache volume: the root
filesystem is read-only, and some default to the home directory (Triton to ~/.triton)."""

SHM_VOLUME = "dshm"
SHM_DIR = "/dev/shm"
DEFAULT_SHARED_MEMORY = "2Gi"
"""/dev/shm of a multi-process Pod whose profile names no size: enough for NCCL's
shared-memory transport between eight local processes (trainer ranks, vLLM's tensor-
parallel workers) and the data loader or vLLM's own processes; the 64 MiB a container gets
otherwise is too small for NCCL's buffers."""

FATAL_EXIT_CODES = (int(TrainerExit.fatal), int(TrainerExit.usage))
"""Exit codes of the images' own errors (the trainer's TrainerExit.fatal for bad data or a
bad run spec, argparse's usage error; the batch runner follows the same convention):
retrying cannot fix bad data or a bad spec, so the Job fails at once. Other exits (OOM
kill 137, node trouble, TrainerExit.retryable) count against `backoffLimit`, and a Pod
evicted by a disruption (preemption, drain) is retried without counting at all."""


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
    if len(name) > MAX_LABEL_LENGTH:
        name = f"{prefix}-{hashlib.sha256(value.encode()).hexdigest()[:16]}"
    return name


def store_access(settings: Settings, uris: Iterable[str | None]) -> dict[str, Any]:
    """Volumes, mounts and environment that give a Pod the artifact store, the URIs it
    reads and the cache it copies them into: each PVC named by a pvc:// URI is mounted
    where `pvc_mount_root` expects it; s3:// needs credentials, taken from an optional
    Secret in the workload's namespace (or from the node's identity when it is absent);
    the cache is an emptyDir of `workload_cache_size` (CACHE_DIR)."""
    all_uris = [settings.store_root, *uris]
    volumes = [{"name": CACHE_VOLUME, "emptyDir": {"sizeLimit": settings.workload_cache_size}}]
    mounts = [{"name": CACHE_VOLUME, "mountPath": CACHE_DIR}]
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
        *({"name": name, "value": value} for name, value in CACHE_ENV.items()),
    ]
    env_from = []
    if any(uri and is_object_store(uri) for uri in all_uris):
        env_from.append({"secretRef": {"name": STORE_CREDENTIALS_SECRET, "optional": True}})
    return {"volumes": volumes, "mounts": mounts, "env": env, "env_from": env_from}


def placement(hardware: Hardware | None) -> dict[str, Any]:
    """Container resources, node selector and tolerations for a hardware request: GPUs
    become `nvidia.com/gpu` limits, the GPU type a node-selector on the GPU operator's
    product label, and GPU nodes' usual taint is tolerated. Memory is always bounded: the
    limit is the request unless the hardware names one (a Pod never counts on memory the
    scheduler did not reserve), and hardware that names no memory (no profile) gets
    DEFAULT_POD_MEMORY, as a profile does."""
    hardware = hardware or Hardware()
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if hardware.requests:
        requests.update(hardware.requests.to_wire())
    if hardware.limits:
        limits.update(hardware.limits.to_wire())
    requests.setdefault("memory", limits.get("memory", DEFAULT_POD_MEMORY))
    limits.setdefault("memory", requests["memory"])
    node_selector = dict(hardware.node_selector or {})
    tolerations = [t.to_wire() for t in hardware.tolerations or []]
    gpus = hardware.gpu_count or 0
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        if hardware.gpu_type:
            node_selector[GPU_PRODUCT_LABEL] = hardware.gpu_type
    resources = {"requests": requests, "limits": limits}
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


def owned_secret(
    name: str, owner: Mapping[str, Any], labels: dict[str, str], values: dict[str, str]
) -> dict[str, Any]:
    """A Secret in the owner's namespace, deleted with it. `data` (base64), not stringData:
    a server-side re-apply with new values must replace the old ones."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": owner["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in values.items()},
    }


def workload_pod_security() -> dict[str, Any]:
    """The Pod securityContext of every workload Pod: the images' own non-root user, and
    the container runtime's seccomp profile (the restricted profile allows no other)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": WORKLOAD_UID,
        "runAsGroup": WORKLOAD_UID,
        "fsGroup": WORKLOAD_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container(container: dict[str, Any]) -> dict[str, Any]:
    """`container` with the securityContext the restricted profile asks of every container
    (no privilege escalation, no capabilities, non-root), plus a read-only root filesystem:
    the images write only to the store, the cache and /tmp, which are volumes."""
    security = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    return {**container, "securityContext": security}


def with_image_pull(pod: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """`pod` pulling its images as the platform says: its imagePullSecrets (Secrets of the
    Pod's own namespace) and, on every container, the imagePullPolicy when one is set."""
    pod = dict(pod)
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    if settings.image_pull_policy:
        pod["containers"] = [{**c, "imagePullPolicy": settings.image_pull_policy} for c in pod["containers"]]
    return pod


def pod_spec(
    *,
    container: dict[str, Any],
    configmap: str,
    access: dict[str, Any],
    place: dict[str, Any],
    restart_policy: str,
    grace_seconds: int,
) -> dict[str, Any]:
    """The Pod spec of one workload container, admitted under the restricted profile (see
    `restricted_container`). None of the workloads calls the Kubernetes API (the batch
    runner talks to the gateway with an API key), so no service account token is mounted."""
    container = restricted_container({
        **container,
        "env": [*container["env"], {"name": "TMPDIR", "value": TMP_DIR}],
        "volumeMounts": [
            {"name": RUN_VOLUME, "mountPath": RUN_DIR, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": TMP_DIR},
            *access["mounts"],
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": place["resources"],
    })
    if access["env_from"]:
        container["envFrom"] = access["env_from"]
    pod: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": grace_seconds,
        "automountServiceAccountToken": False,
        "securityContext": workload_pod_security(),
        "containers": [container],
        "volumes": [
            {"name": RUN_VOLUME, "configMap": {"name": configmap}},
            {"name": TMP_VOLUME, "emptyDir": {}},
            *access["volumes"],
        ],
    }
    if place["node_selector"]:
        pod["nodeSelector"] = place["node_selector"]
    if place["tolerations"]:
        pod["tolerations"] = place["tolerations"]
    return pod


def with_shared_memory(pod: dict[str, Any], size: str | None) -> dict[str, Any]:
    """`pod` with a memory-backed /dev/shm on its first container (the one whose processes
    share memory). It counts against the Pod's memory, hence the size limit."""
    first, *rest = pod["containers"]
    mount = {"name": SHM_VOLUME, "mountPath": SHM_DIR}
    volume = {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": size or DEFAULT_SHARED_MEMORY}}
    return {
        **pod,
        "containers": [{**first, "volumeMounts": [*first["volumeMounts"], mount]}, *rest],
        "volumes": [*pod["volumes"], volume],
    }


def kueue_labels(queue_name: str | None, priority_class: str | None) -> dict[str, str]:
    """The labels that hand a Job to Kueue: its LocalQueue and WorkloadPriorityClass."""
    labels = {Label.KUEUE_QUEUE: queue_name, Label.KUEUE_PRIORITY_CLASS: priority_class}
    return {key: value for key, value in labels.items() if value}


def pod_failure_policy(container: str) -> dict[str, Any]:
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            fail_on_exit_codes(container, "In", FATAL_EXIT_CODES),
        ]
    }


def fail_on_exit_codes(container: str, operator: str, codes: Iterable[int]) -> dict[str, Any]:
    return {"action": "FailJob", "onExitCodes": {"containerName": container, "operator": operator, "values": list(codes)}}