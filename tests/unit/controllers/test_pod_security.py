"""Every workload Pod the operator renders is admitted under Pod Security "restricted".

`restricted_violations` restates the rules of the restricted profile (baseline's included)
as the Pod Security admission plugin applies them to a Pod spec, so the builders are
checked without an API server; tests/integration/controllers/test_pod_admission.py shows
the real plugin admitting the same Pods. The check is fed Pods broken one rule at a time,
so a rule that cannot fail fails here. Beyond the profile, every container gets a
read-only root filesystem with volumes for whatever it writes, no service account token,
bounded memory and the platform's image-pull settings.
"""

from __future__ import annotations

import ast
import copy
import posixpath
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tuneforge.api.sizing import size_training
from tuneforge.api.v1alpha1 import (
    BaseModelResource,
    BatchJobResource,
    FineTuningJobResource,
    ModelDeploymentResource,
)
from tuneforge.api.v1alpha1.common import Hardware, ResourceList
from tuneforge.config import DEFAULT_POD_MEMORY, HardwareProfile, Settings
from tuneforge.controllers import builders

from tests.support.pod_security import restricted_violations

REPO = Path(__file__).resolve().parents[3]
SETTINGS = Settings(store_root="s3://bucket/tf", trainer_image="trainer:1", inference_image="inference:1",
                    batch_image="tuneforge:1", gateway_internal_url="http://gw:8000/v1", hardware_profiles=[
                        HardwareProfile(name="h100-8x2", gpu_count=8, gpu_memory_gb=80, memory="512Gi",
                                        max_nodes=2, shared_memory="32Gi"),
                    ])

# -- the workloads -----------------------------------------------------------------------------

def _base(**spec: object) -> BaseModelResource:
    return BaseModelResource.model_validate({
        "apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel", "metadata": {"name": "m", "uid": "u-m"},
        "spec": {"source": {"uri": "s3://bucket/models/m"}, **spec}})


def trainer_pod(**spec: object) -> dict:
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
            "metadata": {"name": "ftjob-abc", "namespace": "team", "uid": "u-ft"},
            "spec": {"baseModel": "m", "trainingFile": "file-1234abcd", **spec}}
    ft, base = FineTuningJobResource.model_validate(body), _base()
    size = size_training(ft.spec, base.spec, SETTINGS)
    run = builders.training_run(ft, base, training_uri="s3://bucket/tf/f", validation_uri=None,
                                store_root=SETTINGS.store_root, distributed=builders.resolve_distributed(ft, base, size))
    job = builders.trainer_job(body, run, hardware=size.hardware, settings=SETTINGS)
    return job["spec"]["template"]["spec"]


def runner_pod() -> dict:
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": "batch-abc", "namespace": "team", "uid": "u-b"}, "spec": {"inputFile": "file-1234abcd"}}
    batch = BatchJobResource.model_validate(body)
    run = builders.batch_run(batch, input_uri="s3://bucket/tf/in", served=["m"], settings=SETTINGS,
                             expires=datetime(2030, 1, 1, tzinfo=timezone.utc))
    return builders.runner_job(body, run, settings=SETTINGS, retries_per_hour=10)["spec"]["template"]["spec"]


def serving_pod(engine: str = "cpu") -> dict:
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "team", "uid": "u-md"}, "spec": {"baseModel": "m"}}
    mdep = ModelDeploymentResource.model_validate(body)
    base = _base(serving={"engine": engine, "hardware": {"gpuCount": 1 if engine == "vllm" else 0}})
    hardware = builders.serving_hardware(mdep, base, SETTINGS)
    serving = builders.serving_spec(mdep, base, hardware=hardware, store_root=SETTINGS.store_root)
    deployment = builders.serving_deployment(
        body, serving, replicas=1, hardware=hardware, rollout=mdep.spec.rollout,
        startup_seconds=base.spec.serving.startup_timeout_seconds, settings=SETTINGS)
    return deployment["spec"]["template"]["spec"]


WORKLOADS: dict[str, Callable[[], dict]] = {
    "trainer": trainer_pod,
    "trainer-group-of-2x8-gpus": lambda: trainer_pod(hardware={"profile": "h100-8x2", "nodes": 2}),
    "batch-runner": runner_pod,
    "serving-cpu-with-adapter-loader": serving_pod,
    "serving-vllm-with-adapter-loader": lambda: serving_pod("vllm"),
}


@pytest.mark.parametrize("render", WORKLOADS.values(), ids=WORKLOADS.keys())
def test_every_workload_pod_is_admitted_under_restricted(render) -> None:
    assert restricted_violations(render()) == []


def _set(path: str, value: object) -> Callable[[dict], None]:
    """A mutation setting `path` (dotted, `containers.0.securityContext.privileged`)."""
    def mutate(pod: dict) -> None:
        *parents, last = path.split(".")
        node = pod
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value
    return mutate


def _drop(path: str) -> Callable[[dict], None]:
    def mutate(pod: dict) -> None:
        *parents, last = path.split(".")
        node = pod
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]
    return mutate


BROKEN = {
    "no container securityContext": (_drop("containers.0.securityContext"), "allowPrivilegeEscalation"),
    "privilege escalation": (_set("containers.0.securityContext.allowPrivilegeEscalation", True),
                             "allowPrivilegeEscalation"),
    "privileged": (_set("containers.0.securityContext.privileged", True), "privileged"),
    "capabilities kept": (_set("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}), "lacks ALL"),
    "capability added": (_set("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]), "SYS_ADMIN"),
    "root allowed": (_set("containers.0.securityContext.runAsNonRoot", False), "runAsNonRoot"),
    "no runAsNonRoot anywhere": (lambda pod: (_drop("securityContext.runAsNonRoot")(pod),
                                              _drop("containers.0.securityContext.runAsNonRoot")(pod)),
                                 "runAsNonRoot"),
    "uid 0": (_set("securityContext.runAsUser", 0), "runAsUser 0"),
    "no seccomp profile": (_drop("securityContext.seccompProfile"), "seccompProfile None"),
    "unconfined seccomp": (_set("containers.0.securityContext.seccompProfile", {"type": "Unconfined"}),
                           "Unconfined"),
    "host network": (_set("hostNetwork", True), "hostNetwork"),
    "host port": (_set("containers.0.ports", [{"containerPort": 80, "hostPort": 80}]), "hostPort"),
    "hostPath volume": (lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    "unsafe sysctl": (_set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]), "kernel.msgmax"),
    "SELinux user": (_set("securityContext.seLinuxOptions", {"user": "system_u"}), "seLinuxOptions"),
    "unmasked /proc": (_set("containers.0.securityContext.procMount", "Unmasked"), "procMount"),
    "unconfined AppArmor": (_set("securityContext.appArmorProfile", {"type": "Unconfined"}), "appArmorProfile"),
    "host process": (_set("securityContext.windowsOptions", {"hostProcess": True}), "hostProcess"),
    "an init container without the context": (
        lambda pod: pod.setdefault("initContainers", []).append({"name": "init", "image": "x"}), "'init'"),
}


@pytest.mark.parametrize("mutate,expected", BROKEN.values(), ids=BROKEN.keys())
def test_the_check_refuses_a_pod_broken_in_one_way(mutate, expected: str) -> None:
    pod = copy.deepcopy(trainer_pod())
    mutate(pod)
    problems = restricted_violations(pod)
    assert any(expected in problem for problem in problems), problems


# -- beyond the profile ------------------------------------------------------------------------

def _mounted(container: dict, path: str) -> bool:
    return any(path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
               for m in container["volumeMounts"])


@pytest.mark.parametrize("render", WORKLOADS.values(), ids=WORKLOADS.keys())
def test_containers_write_only_to_volumes_and_get_no_token(render) -> None:
    pod = render()
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == builders.WORKLOAD_UID
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[builders.CACHE_VOLUME]["emptyDir"] == {"sizeLimit": SETTINGS.workload_cache_size}
    assert volumes[builders.TMP_VOLUME] == {"name": builders.TMP_VOLUME, "emptyDir": {}}
    for container in pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e.get("value") for e in container["env"]}
        for name in [*builders.CACHE_ENV, "TMPDIR"]:
            assert _mounted(container, env[name]), f"{name}={env[name]} is not on a volume"
        paths = [m["mountPath"] for m in container["volumeMounts"]]
        assert len(paths) == len(set(paths)) and {m["name"] for m in container["volumeMounts"]} <= set(volumes)
        assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]


def test_the_cache_holds_the_images_own_cache_directories() -> None:
    """The inference image's TUNEFORGE_CACHE_DIR, and every library cache of the list, lie
    in the one cache volume, so nothing defaults to the read-only home directory."""
    assert all(posixpath.commonpath([builders.CACHE_DIR, path]) == builders.CACHE_DIR
               for path in builders.CACHE_ENV.values())
    assert builders.CACHE_ENV["TUNEFORGE_CACHE_DIR"] == "/var/cache/tuneforge"


@pytest.mark.parametrize("dockerfile", ["trainer-image/Dockerfile", "inference-image/Dockerfile",
                                        "operator/Dockerfile"])
def test_the_pods_uid_is_the_one_each_image_creates_and_runs_as(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    assert re.findall(r"^USER\s+(\S+)", text, re.M)[-1] == str(builders.WORKLOAD_UID)
    assert re.search(rf"useradd\b[^\n]*--uid {builders.WORKLOAD_UID}\b", text)


def test_no_workload_image_calls_the_kubernetes_api() -> None:
    """Why no service account token is mounted: nothing the trainer, the inference server
    or the batch runner runs imports a Kubernetes client."""
    for package in ("trainer-image/tuneforge_trainer", "inference-image/tuneforge_inference"):
        for source in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not [n for n in names if n.split(".")[0] in ("kubernetes", "kopf")], source


def test_memory_is_bounded_with_or_without_a_profile() -> None:
    assert builders.placement(None)["resources"] == {
        "requests": {"memory": DEFAULT_POD_MEMORY}, "limits": {"memory": DEFAULT_POD_MEMORY}}
    only_limit = builders.placement(Hardware(limits=ResourceList(memory="4Gi")))["resources"]
    assert only_limit["requests"]["memory"] == only_limit["limits"]["memory"] == "4Gi"
    assert HardwareProfile(name="p").memory == DEFAULT_POD_MEMORY
    [runner] = runner_pod()["containers"]
    assert runner["resources"] == {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}


def test_without_pull_settings_kubernetes_defaults_apply() -> None:
    pod = trainer_pod()
    assert "imagePullSecrets" not in pod and "imagePullPolicy" not in pod["containers"][0]


@pytest.mark.parametrize("render", WORKLOADS.values(), ids=WORKLOADS.keys())
def test_the_platforms_pull_settings_reach_every_container(render, monkeypatch) -> None:
    monkeypatch.setattr(SETTINGS, "image_pull_secrets", ["regcred"])
    monkeypatch.setattr(SETTINGS, "image_pull_policy", "Always")
    pod = render()
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert [c["imagePullPolicy"] for c in pod["containers"]] == ["Always"] * len(pod["containers"])
