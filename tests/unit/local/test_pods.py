"""Pod spec -> local process plan, on the exact Pods the controllers build."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.config import Settings
from tuneforge.contracts import BatchRun
from tuneforge.controllers import builders
from tuneforge.local.node import image_catalog
from tuneforge.local.pods import (
    BIND_HOST_ENV,
    TERMINATION_LOG_ENV,
    WEIGHT_CACHE_ENV,
    MissingReference,
    PodPlace,
    PodSources,
    UnsupportedContainer,
    expand,
    plan_container,
    rewrite_path,
)

SETTINGS = Settings(store_root="pvc://store/root", pvc_mount_root=Path("/mnt/pvc"))
SCRIPTS = Path("/venv/bin")
PLACE = PodPlace(root=Path("/state/pods/ns_p_uid"), pod_ip="127.0.1.7", node_name="tuneforge-local",
                 host_ip="127.0.0.1", shared_dirs={"store": Path("/state/claims/ns/store")})


def _pod(template_spec: dict, name: str = "p") -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": "uid", "labels": {"app": "x"}},
            "spec": {**template_spec, "nodeName": "tuneforge-local", "serviceAccountName": "default"}}


def _runner_pod() -> dict:
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": "batch-1", "namespace": "ns", "uid": "u1"}, "spec": {"completionWindow": "24h"}}
    run = BatchRun(batch_id="batch-1", namespace="ns", input_uri="pvc://store/root/ns/files/f/content",
                   endpoint="/v1/chat/completions", output_uri="pvc://store/root/ns/batches/batch-1",
                   store_root=SETTINGS.store_root, target_base_url="http://127.0.0.1:8000/v1",
                   api_key_env=builders.BATCH_KEY_ENV, expires_at="2030-01-01T00:00:00Z",
                   output_file_id="file-a", error_file_id="file-b")
    return _pod(builders.runner_job(body, run, settings=SETTINGS, retries_per_hour=10)["spec"]["template"]["spec"])


def _plan(pod: dict, sources: PodSources, **kwargs):
    return plan_container(pod, pod["spec"]["containers"][0], catalog=image_catalog(SETTINGS, SCRIPTS),
                          sources=sources, place=PLACE, base_env={"PATH": "/venv/bin"},
                          node_capacity={"cpu": "2"}, **kwargs)


RUNNER_SOURCES = PodSources(
    config_maps={"batch-1-run": {"run.json": b'{"batch_id": "batch-1"}'}},
    secrets={"batch-1-api-key": {builders.BATCH_KEY_ENV: b"tf-secret"}},
)


def test_batch_runner_pod_becomes_the_console_script_with_its_run_file_and_key():
    plan = _plan(_runner_pod(), RUNNER_SOURCES)
    rootfs = PLACE.root / "rootfs"
    assert plan.argv == [str(SCRIPTS / "tuneforge-batch"), "--run", f"{rootfs}/etc/tuneforge/run.json"]
    run_volume = PLACE.volume_dir("run")
    assert {f.path: f.content for f in plan.files} == {run_volume / "run.json": b'{"batch_id": "batch-1"}'}
    assert plan.links[rootfs / "etc/tuneforge"] == run_volume
    assert plan.links[rootfs / "mnt/pvc/store"] == Path("/state/claims/ns/store")
    assert plan.env[builders.BATCH_KEY_ENV] == "tf-secret"
    assert plan.env["TUNEFORGE_STORE_ROOT"] == "pvc://store/root"
    # /mnt/pvc holds the mounted claims, so the root the images resolve pvc:// against follows them
    assert plan.env["TUNEFORGE_PVC_MOUNT_ROOT"] == f"{rootfs}/mnt/pvc"
    assert plan.env[BIND_HOST_ENV] == "127.0.1.7"
    assert plan.env[TERMINATION_LOG_ENV] == str(PLACE.root / "runner.termination-log")
    assert plan.termination_message_policy == "FallbackToLogsOnError"
    assert plan.log == PLACE.root / "runner.log"
    assert plan.env["PATH"] == "/venv/bin"


def test_missing_secret_is_a_retryable_config_error_not_a_crash():
    with pytest.raises(MissingReference, match="Secret 'batch-1-api-key' not found"):
        _plan(_runner_pod(), PodSources(config_maps=RUNNER_SOURCES.config_maps))
    with pytest.raises(MissingReference, match="ConfigMap 'batch-1-run'"):
        _plan(_runner_pod(), PodSources(secrets=RUNNER_SOURCES.secrets))


def test_missing_claim_is_a_config_error():
    place = PodPlace(root=PLACE.root, pod_ip=PLACE.pod_ip, node_name=PLACE.node_name, host_ip=PLACE.host_ip)
    pod = _runner_pod()
    with pytest.raises(MissingReference, match="PersistentVolumeClaim 'store'"):
        plan_container(pod, pod["spec"]["containers"][0], catalog=image_catalog(SETTINGS, SCRIPTS),
                       sources=RUNNER_SOURCES, place=place, base_env={}, node_capacity={})


@pytest.mark.parametrize("image, command, message", [
    ("nginx:1.27", None, "image 'nginx:1.27' cannot run on the local node"),
    (SETTINGS.trainer_image, ["bash", "-c", "echo hi"], r"command \['bash'\] is not an entrypoint"),
    (SETTINGS.trainer_image, ["tuneforge-serve"], "is not an entrypoint of image"),
])
def test_other_images_and_commands_are_unsupported(image, command, message):
    container = {"name": "c", "image": image}
    if command:
        container["command"] = command
    with pytest.raises(UnsupportedContainer, match=message):
        _plan(_pod({"containers": [container]}), PodSources())


def test_image_default_entrypoint_and_args_apply_when_the_container_sets_none():
    plan = _plan(_pod({"containers": [{"name": "c", "image": SETTINGS.trainer_image}]}), PodSources())
    assert plan.argv == [str(SCRIPTS / "tuneforge-train"), "--run", "/etc/tuneforge/run.json"]


def test_env_from_field_refs_and_expansion_follow_kubernetes_order():
    container = {
        "name": "c", "image": SETTINGS.inference_image, "command": ["tuneforge-serve"],
        "args": ["--run", "$(RUN_DIR)/run.json", "$$(LITERAL)"],
        "envFrom": [{"configMapRef": {"name": "common"}, "prefix": "CM_"},
                    {"secretRef": {"name": "absent", "optional": True}}],
        "env": [
            {"name": "RUN_DIR", "value": "/etc/tuneforge"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "URL", "value": "http://$(IP):8000/$(UNDEFINED)"},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
        "volumeMounts": [{"name": "run", "mountPath": "/etc/tuneforge"}],
    }
    pod = _pod({"containers": [container], "volumes": [{"name": "run", "emptyDir": {}}]})
    plan = _plan(pod, PodSources(config_maps={"common": {"A": b"1"}}))
    assert plan.env["CM_A"] == "1"
    assert plan.env["POD"] == "p" and plan.env["APP"] == "x"
    assert plan.env["URL"] == "http://127.0.1.7:8000/$(UNDEFINED)"
    assert "OPT" not in plan.env
    assert plan.env["CPUS"] == "2"
    assert plan.env["RUN_DIR"] == str(PLACE.rootfs / "etc/tuneforge")
    assert plan.argv[1:] == ["--run", f"{PLACE.rootfs}/etc/tuneforge/run.json", "$(LITERAL)"]
    assert PLACE.volume_dir("run") in plan.directories


def test_projected_service_account_volume_gets_token_and_ca():
    volume = {"name": "kube-api-access", "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}}
    container = {"name": "c", "image": SETTINGS.trainer_image, "volumeMounts": [
        {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}
    pod = _pod({"containers": [container], "volumes": [volume]})
    with pytest.raises(MissingReference):
        _plan(pod, PodSources(config_maps={"kube-root-ca.crt": {"ca.crt": b"CA"}}))
    plan = _plan(pod, PodSources(config_maps={"kube-root-ca.crt": {"ca.crt": b"CA"}}, service_account_token="jwt"))
    directory = PLACE.volume_dir("kube-api-access")
    assert {f.path.name: f.content for f in plan.files} == {"token": b"jwt", "ca.crt": b"CA", "namespace": b"ns"}
    assert all(f.path.parent == directory for f in plan.files)


def test_unsupported_volume_types_are_named():
    container = {"name": "c", "image": SETTINGS.trainer_image, "volumeMounts": [{"name": "h", "mountPath": "/h"}]}
    pod = _pod({"containers": [container], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]})
    with pytest.raises(UnsupportedContainer, match="volume 'h' of type hostPath"):
        _plan(pod, PodSources())


def test_path_rewriting_rule():
    mounts = ["/etc/tuneforge", "/mnt/pvc/store"]
    root = Path("/r")
    assert rewrite_path("/etc/tuneforge/run.json", mounts, root) == "/r/etc/tuneforge/run.json"
    assert rewrite_path("/etc/tuneforge", mounts, root) == "/r/etc/tuneforge"
    assert rewrite_path("/mnt/pvc", mounts, root) == "/r/mnt/pvc"
    assert rewrite_path("/etc/tuneforgex", mounts, root) == "/etc/tuneforgex"
    assert rewrite_path("/etc/passwd", mounts, root) == "/etc/passwd"
    assert rewrite_path("file:///etc/tuneforge", mounts, root) == "file:///etc/tuneforge"
    assert rewrite_path("relative/etc/tuneforge", mounts, root) == "relative/etc/tuneforge"


def test_expand():
    assert expand("$(A)-$(B)-$$(A)", {"A": "1"}) == "1-$(B)-$(A)"


def test_trainer_pod_plan():
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
            "metadata": {"name": "ftjob-1", "namespace": "ns", "uid": "u"}}
    from tuneforge.contracts import TrainingRun

    run = TrainingRun(job_id="ftjob-1", namespace="ns", base_model="m", base_model_uri="file:///models/m",
                      training_file="file:///data/t.jsonl", output_uri="file:///store/ns/fine-tuning/ftjob-1",
                      fine_tuned_model="ft:m:ns::ftjob-1")
    settings = Settings(store_root="file:///store")
    job = builders.trainer_job(body, run, hardware=None, settings=settings)
    pod = _pod(job["spec"]["template"]["spec"])
    plan = _plan(pod, PodSources(config_maps={"ftjob-1-run": {"run.json": b"{}"}}))
    assert plan.argv == [str(SCRIPTS / "tuneforge-train"), "--run", f"{PLACE.rootfs}/etc/tuneforge/run.json"]
    assert plan.env["TUNEFORGE_STORE_ROOT"] == "file:///store"


def test_the_pods_tmp_and_caches_are_its_own_but_the_weight_cache_is_the_machines():
    """The restricted Pod writes only to its emptyDirs, which locally are directories of the
    Pod; the weight cache it points into one stays the machine's (rule 4, docs/local.md)."""
    pod = _runner_pod()
    plan = plan_container(pod, pod["spec"]["containers"][0], catalog=image_catalog(SETTINGS, SCRIPTS),
                          sources=RUNNER_SOURCES, place=PLACE, node_capacity={},
                          base_env={"PATH": "/venv/bin", WEIGHT_CACHE_ENV: "/home/me/.cache/tuneforge"})
    assert plan.env[WEIGHT_CACHE_ENV] == "/home/me/.cache/tuneforge"
    assert plan.env["TMPDIR"] == f"{PLACE.rootfs}/tmp"
    assert plan.env["HF_HOME"] == f"{PLACE.rootfs}/var/cache/huggingface"
    assert plan.links[PLACE.rootfs / "tmp"] == PLACE.volume_dir(builders.TMP_VOLUME)
    assert plan.links[PLACE.rootfs / "var/cache"] == PLACE.volume_dir(builders.CACHE_VOLUME)


def test_indexed_job_pod_gets_its_hostname_and_completion_index():
    """As the Job controller of Kubernetes 1.34 builds an Indexed Job's Pod: the index in a
    label and an annotation, JOB_COMPLETION_INDEX from the label, hostname `<job>-<index>`."""
    index_key = "batch.kubernetes.io/job-completion-index"
    container = {"name": "c", "image": SETTINGS.trainer_image, "env": [
        {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{index_key}']"}}},
        {"name": "FROM_ANNOTATION", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{index_key}']"}}},
    ]}
    pod = _pod({"containers": [container], "hostname": "mn-1", "subdomain": "mn-svc"}, name="mn-1-abcde")
    pod["metadata"]["labels"][index_key] = "1"
    pod["metadata"]["annotations"] = {index_key: "1"}
    plan = _plan(pod, PodSources())
    assert plan.env["JOB_COMPLETION_INDEX"] == plan.env["FROM_ANNOTATION"] == "1"
    assert plan.env["HOSTNAME"] == "mn-1"


def test_hostname_defaults_to_the_pod_name_and_the_spec_env_wins():
    container = {"name": "c", "image": SETTINGS.trainer_image}
    assert _plan(_pod({"containers": [container]}, name="web-7"), PodSources()).env["HOSTNAME"] == "web-7"
    container["env"] = [{"name": "HOSTNAME", "value": "chosen"}]
    assert _plan(_pod({"containers": [container]}), PodSources()).env["HOSTNAME"] == "chosen"
