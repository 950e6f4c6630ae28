"""The chart as rendered by the pinned helm: lint and template for the defaults and every
values file under charts/tuneforge/ci/, and what each rendering must contain."""

from __future__ import annotations

import argparse
import json

import pytest

from tuneforge.__main__ import build_parser
from tuneforge.api.v1alpha1.basemodel import BaseModelResource
from tuneforge.api.v1alpha1.common import Hardware
from tuneforge.api.v1alpha1.modeldeployment import ModelDeploymentResource
from tuneforge.config import Settings
from tuneforge.controllers.builders import (
    STORE_CREDENTIALS_SECRET,
    serving_deployment,
    serving_labels,
    serving_spec,
)
from tuneforge.storage import resolve_uri

from tests.support.helm import CHART, CI_VALUES, NAMESPACE, Helm, Rendered
from tests.support.pod_security import restricted_violations

CI = {path.stem: path for path in CI_VALUES}
OPERATOR, GATEWAY, SETTINGS = "tuneforge-operator", "tuneforge-gateway", "tuneforge-settings"


@pytest.fixture(scope="module")
def renderings(helm: Helm) -> dict[str, Rendered]:
    return {"defaults": helm.template(), **{name: helm.template(path) for name, path in CI.items()}}


def test_ci_values_cover_the_required_scenarios():
    assert {"default-values", "s3-values", "monitoring-values", "gpu-catalog-values"} <= set(CI)


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["defaults", *CI])
def test_lint_and_template_succeed(helm: Helm, values):
    files = ["-f", str(values)] if values else []
    lint = helm.run("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *files)
    assert "0 chart(s) failed" in lint.stdout
    rendered = helm.template(*([values] if values else []))
    kinds = {doc["kind"] for doc in rendered.documents}
    assert {"StatefulSet", "Deployment", "Service", "ServiceAccount", "ClusterRole", "Role", "ConfigMap"} <= kinds


def _settings_env(rendered: Rendered) -> dict[str, str]:
    return rendered.one("ConfigMap", SETTINGS)["data"]


def _container(rendered: Rendered, kind: str, name: str) -> dict:
    return rendered.one(kind, name)["spec"]["template"]["spec"]["containers"][0]


def test_operator_and_gateway_share_the_settings(renderings):
    for rendered in renderings.values():
        for kind, name in (("StatefulSet", OPERATOR), ("Deployment", GATEWAY)):
            sources = _container(rendered, kind, name)["envFrom"]
            assert {"configMapRef": {"name": SETTINGS}} in sources


def test_hardware_profiles_reach_the_settings_the_code_reads(renderings, monkeypatch):
    env = _settings_env(renderings["gpu-catalog-values"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    names = [profile.name for profile in settings.hardware_profiles]
    assert names == ["cpu-small", "a10g-1", "h100-8"]
    h100 = settings.hardware_profiles[2]
    assert (h100.gpu_type, h100.gpu_count, h100.cost_per_hour) == ("NVIDIA-H100-80GB-HBM3", 8, 88.49)
    assert h100.tolerations == [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}]
    assert h100.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert settings.default_hardware_profile == "a10g-1"
    defaults = _settings_env(renderings["defaults"])
    [cpu] = json.loads(defaults["TUNEFORGE_HARDWARE_PROFILES"])
    assert (cpu["name"], cpu["gpuCount"], cpu["costPerHour"]) == ("cpu", 0, 0)
    assert defaults["TUNEFORGE_DEFAULT_HARDWARE_PROFILE"] == "cpu"


def test_catalog_entries_are_valid_basemodels(renderings):
    models = renderings["gpu-catalog-values"].of_kind("BaseModel")
    assert [m["metadata"]["name"] for m in models] == ["llama-3-1-8b-instruct", "smollm2-135m-instruct"]
    llama = BaseModelResource.model_validate(models[0])
    assert llama.spec.serving.engine_args == ["--enable-prefix-caching"] and llama.spec.default_hardware == "a10g-1"
    assert models[0]["metadata"]["labels"]["tuneforge.io/family"] == "llama"
    assert renderings["defaults"].of_kind("BaseModel") == []


def test_pvc_store_is_mounted_where_its_uris_resolve(renderings, monkeypatch):
    rendered = renderings["defaults"]
    env = _settings_env(rendered)
    assert env["TUNEFORGE_STORE_ROOT"] == "pvc://tuneforge-store/store"
    claim = rendered.one("PersistentVolumeClaim", "tuneforge-store")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    monkeypatch.setenv("TUNEFORGE_PVC_MOUNT_ROOT", env["TUNEFORGE_PVC_MOUNT_ROOT"])
    from tuneforge.config import settings

    settings.cache_clear()
    try:
        local = resolve_uri(env["TUNEFORGE_STORE_ROOT"]).removeprefix("file://")
    finally:
        settings.cache_clear()
    for _, pod in rendered.pod_templates():
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert local.startswith(mounts["store"] + "/")
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["store"]["persistentVolumeClaim"]["claimName"] == "tuneforge-store"


def test_s3_store_uses_the_credentials_secret_the_operator_hands_on(renderings):
    rendered = renderings["s3-values"]
    assert _settings_env(rendered)["TUNEFORGE_STORE_ROOT"] == "s3://tuneforge-artifacts/prod"
    assert rendered.of_kind("PersistentVolumeClaim") == []
    secrets = rendered.of_kind("Secret")
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["team-a", "team-b", NAMESPACE]
    for secret in secrets:
        assert secret["metadata"]["name"] == STORE_CREDENTIALS_SECRET
        assert secret["stringData"]["AWS_ENDPOINT_URL"] == "http://minio.minio.svc:9000"
        assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                                             "AWS_DEFAULT_REGION"}
    for _, pod in rendered.pod_templates():
        container = pod["containers"][0]
        assert {"secretRef": {"name": STORE_CREDENTIALS_SECRET, "optional": True}} in container["envFrom"]
        assert "store" not in {v["name"] for v in pod["volumes"]}


def test_every_container_is_hardened(renderings):
    for values, rendered in renderings.items():
        for name, pod in rendered.pod_templates():
            assert pod["securityContext"]["runAsNonRoot"] is True, (values, name)
            for container in pod.get("initContainers", []) + pod["containers"]:
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True, (values, name, container["name"])
                assert context["allowPrivilegeEscalation"] is False
                assert context["capabilities"]["drop"] == ["ALL"]
                assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
            assert {"/tmp", "/var/cache/tuneforge"} <= mounts


def test_workload_pull_settings_cache_size_and_admission_timeout_reach_the_operator(helm: Helm, monkeypatch):
    rendered = helm.template(sets=('images={"pullSecrets":["regcred"],"pullPolicy":"Always"}',
                                   'workloadCacheSize="20Gi"', 'operator={"podAdmissionTimeout":120}'))
    for key, value in _settings_env(rendered).items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.image_pull_secrets == ["regcred"] and settings.image_pull_policy == "Always"
    assert settings.workload_cache_size == "20Gi"
    operator = rendered.one("StatefulSet", OPERATOR)["spec"]["template"]["spec"]
    assert operator["imagePullSecrets"] == [{"name": "regcred"}]
    args = [arg.replace("$(TUNEFORGE_PEERING_PRIORITY)", "0") for arg in operator["containers"][0]["args"]]
    assert _parse(args).pod_admission_timeout == 120
    defaults = _settings_env(helm.template())
    assert (defaults["TUNEFORGE_IMAGE_PULL_SECRETS"], defaults["TUNEFORGE_IMAGE_PULL_POLICY"]) == ("[]", "IfNotPresent")


def _parse(args: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(args)


def test_operator_replicas_get_distinct_peering_priorities(renderings):
    rendered = renderings["defaults"]
    statefulset = rendered.one("StatefulSet", OPERATOR)
    assert statefulset["spec"]["replicas"] == 2 and statefulset["spec"]["podManagementPolicy"] == "Parallel"
    container = _container(rendered, "StatefulSet", OPERATOR)
    env = {e["name"]: e for e in container["env"]}
    assert env["TUNEFORGE_PEERING_PRIORITY"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']")
    for ordinal in (0, 1):
        argv = [arg.replace("$(TUNEFORGE_PEERING_PRIORITY)", str(ordinal)) for arg in container["args"]]
        args = _parse(argv)
        assert (args.peering, args.priority, args.standalone) == ("tuneforge", ordinal, False)
        assert (args.metrics_port, args.liveness) == (9090, "http://0.0.0.0:8080/healthz")
    init = statefulset["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"] == ["python", "/etc/tuneforge/peering/ensure_peering.py"]
    script = rendered.one("ConfigMap", f"{OPERATOR}-peering")["data"]["ensure_peering.py"]
    assert script == (CHART / "files" / "ensure_peering.py").read_text()
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_standalone_operator_without_peering(helm: Helm):
    rendered = helm.template(sets=('operator={"replicas":1,"peering":{"enabled":false}}',))
    container = _container(rendered, "StatefulSet", OPERATOR)
    assert _parse(container["args"]).standalone is True
    assert "initContainers" not in rendered.one("StatefulSet", OPERATOR)["spec"]["template"]["spec"]
    assert rendered.of_kind("PodDisruptionBudget") == [rendered.one("PodDisruptionBudget", GATEWAY)]
    assert all("kopf.dev" not in rule["apiGroups"] for _, rule in rendered.rbac_rules())


def test_gateway_serves_where_batch_runners_look(renderings):
    rendered = renderings["defaults"]
    container = _container(rendered, "Deployment", GATEWAY)
    assert _parse(container["args"]).command == "gateway"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TUNEFORGE_GATEWAY_PORT"] == "8000" and env["TUNEFORGE_GATEWAY_MAX_UPLOAD_BYTES"] == "6442450944"
    assert env["TUNEFORGE_GATEWAY_MAX_FINE_TUNE_UPLOAD_BYTES"] == "536870912"
    service = rendered.one("Service", GATEWAY)
    assert service["spec"]["ports"][0]["port"] == 8000
    assert _settings_env(rendered)["TUNEFORGE_GATEWAY_INTERNAL_URL"] == f"http://{GATEWAY}.{NAMESPACE}.svc:8000/v1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    budget = rendered.one("PodDisruptionBudget", GATEWAY)
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == rendered.one("Deployment", GATEWAY)["spec"]["selector"]["matchLabels"]


def test_images_default_to_the_app_version(renderings):
    env = _settings_env(renderings["defaults"])
    assert env["TUNEFORGE_TRAINER_IMAGE"] == "ghcr.io/tuneforge/trainer:0.1.0"
    assert env["TUNEFORGE_INFERENCE_IMAGE"] == "ghcr.io/tuneforge/inference:0.1.0"
    assert _container(renderings["defaults"], "Deployment", GATEWAY)["image"] == "ghcr.io/tuneforge/tuneforge:0.1.0"


def test_monitoring_selects_the_operator_and_the_serving_services(renderings):
    rendered = renderings["monitoring-values"]
    operator_monitor = rendered.one("ServiceMonitor", OPERATOR)
    operator_service = rendered.one("Service", OPERATOR)
    assert operator_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = operator_monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= operator_service["metadata"]["labels"].items()
    assert operator_monitor["spec"]["endpoints"][0]["port"] == operator_service["spec"]["ports"][0]["name"]
    inference = rendered.one("ServiceMonitor", "tuneforge-inference")
    assert inference["spec"]["namespaceSelector"] == {"any": True}
    # The operator labels every ModelDeployment's Service with these (builders.serving_service).
    assert inference["spec"]["selector"]["matchLabels"].items() <= serving_labels("any").items()
    assert renderings["defaults"].of_kind("ServiceMonitor") == []


def test_network_policies_and_ingress(renderings):
    rendered = renderings["monitoring-values"]
    policies = {p["metadata"]["name"]: p for p in rendered.of_kind("NetworkPolicy")}
    assert set(policies) == {GATEWAY, OPERATOR, "tuneforge-inference"}
    metrics_from = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert policies[OPERATOR]["spec"]["ingress"][0]["from"] == metrics_from
    assert "from" not in policies[GATEWAY]["spec"]["ingress"][0]
    serving = policies["tuneforge-inference"]["spec"]
    assert serving["podSelector"]["matchLabels"].items() <= serving_labels("any").items()
    assert serving["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert serving["ingress"][-1] == {"ports": [{"port": "http", "protocol": "TCP"}], "from": metrics_from}
    ingress = rendered.one("Ingress", GATEWAY)
    assert ingress["spec"]["tls"] == [{"hosts": ["tuneforge.internal.example.com"], "secretName": "tuneforge-tls"}]
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == GATEWAY
    assert renderings["defaults"].of_kind("NetworkPolicy") == renderings["defaults"].of_kind("Ingress") == []


def _serving_pod_ports(engine: str) -> set[str]:
    """The named ports of a serving Pod as the operator builds it (and so as the gateway
    finds them on the Pod: it dials every port a serving Pod declares)."""
    body = {"apiVersion": "tuneforge.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": NAMESPACE, "uid": "u"}, "spec": {"baseModel": "m"}}
    mdep = ModelDeploymentResource.model_validate(body)
    base = BaseModelResource.model_validate({"apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel",
                                             "metadata": {"name": "m"},
                                             "spec": {"source": {"uri": "s3://b/m"}, "serving": {"engine": engine}}})
    hardware = Hardware(gpu_count=1) if engine == "vllm" else None
    settings = Settings(store_root="s3://b/store")
    serving = serving_spec(mdep, base, hardware=hardware, store_root=settings.store_root)
    deployment = serving_deployment(body, serving, replicas=1, hardware=hardware, rollout=mdep.spec.rollout,
                                    startup_seconds=600, settings=settings)
    return {port["name"] for container in deployment["spec"]["template"]["spec"]["containers"]
            for port in container.get("ports", [])}


@pytest.mark.parametrize("engine", ["vllm", "cpu"])
def test_the_serving_policy_admits_the_gateway_on_every_port_a_serving_pod_declares(renderings, engine):
    policy = renderings["monitoring-values"].one("NetworkPolicy", "tuneforge-inference")["spec"]
    from_gateway = [rule for rule in policy["ingress"]
                    if any(peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                           == "gateway" for peer in rule.get("from", []))]
    admitted = {port["port"] for rule in from_gateway for port in rule["ports"]}
    assert _serving_pod_ports(engine) <= admitted


def test_the_serving_policy_admits_the_operator_to_the_engines_metrics(renderings):
    """The autoscaler reads each serving Pod's load from /metrics on its `http` port."""
    policy = renderings["monitoring-values"].one("NetworkPolicy", "tuneforge-inference")["spec"]
    from_operator = [rule for rule in policy["ingress"]
                     if any(peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                            == "operator" for peer in rule.get("from", []))]
    assert {port["port"] for rule in from_operator for port in rule["ports"]} == {"http"}


# -- RBAC -------------------------------------------------------------------------------

def test_no_rbac_rule_uses_a_wildcard(renderings):
    for values, rendered in renderings.items():
        rules = rendered.rbac_rules()
        assert rules, values
        for owner, rule in rules:
            assert "nonResourceURLs" not in rule, (values, owner, rule)
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                for entry in rule.get(field, []):
                    assert "*" not in entry, f"{values}: {owner} has a wildcard in {field}: {rule}"


def _grants(rendered: Rendered) -> set[tuple[str, str, str, str, str]]:
    """(role, apiGroup, resource, verb, resourceName) for every permission granted."""
    return {
        (owner, group, resource, verb, name)
        for owner, rule in rendered.rbac_rules()
        for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]
        for name in rule.get("resourceNames", [""])
    }


def _expand(owner: str, group: str, resources: str, verbs: str, name: str = "") -> set:
    return {(owner, group, r, v, name) for r in resources.split() for v in verbs.split()}


def test_rbac_grants_exactly_the_reviewed_permissions(renderings):
    """Each grant is used by the code (see the comments in templates/rbac-*.yaml); adding
    one must be a deliberate change of this list."""
    op, op_ns = f"ClusterRole/{OPERATOR}", f"Role/{OPERATOR}"
    gw, gw_ns = f"ClusterRole/{GATEWAY}", f"Role/{GATEWAY}"
    kinds = "basemodels finetuningjobs modeldeployments batchjobs"
    expected = set().union(
        _expand(op, "tuneforge.io", kinds, "get list watch patch"),
        _expand(op, "tuneforge.io", " ".join(f"{k}/status" for k in kinds.split()), "patch"),
        _expand(op, "tuneforge.io", "modeldeployments", "create delete"),
        _expand(op, "batch", "jobs", "get list watch create delete"),
        _expand(op, "apps", "deployments", "list watch create patch"),
        _expand(op, "apps", "deployments/scale", "patch"),
        _expand(op, "", "pods", "list watch"),
        _expand(op, "", "configmaps services", "create patch"),
        _expand(op, "", "secrets", "get create patch delete"),
        _expand(op, "", "events", "create list"),
        _expand(op, "", "namespaces", "get"),
        _expand(op, "apiextensions.k8s.io", "customresourcedefinitions", "list watch"),
        _expand(op, "kueue.x-k8s.io", "workloads", "list watch"),
        _expand(op, "kopf.dev", "clusterkopfpeerings", "list watch create"),
        _expand(op, "kopf.dev", "clusterkopfpeerings", "get patch", "tuneforge"),
        _expand(op_ns, "", "secrets", "list"),
        _expand(gw, "tuneforge.io", "finetuningjobs batchjobs", "get list watch create patch"),
        _expand(gw, "tuneforge.io", "finetuningjobs", "delete"),
        _expand(gw, "tuneforge.io", "basemodels", "get list"),
        _expand(gw, "tuneforge.io", "modeldeployments", "get list create patch"),
        _expand(gw, "apps", "deployments", "get"),
        _expand(gw, "", "pods", "list"),
        _expand(gw, "", "pods/log", "get"),
        _expand(gw_ns, "", "secrets", "get"),
    )
    assert _grants(renderings["defaults"]) == expected
    roles = renderings["defaults"].of_kind("Role")
    assert {r["metadata"]["namespace"] for r in roles} == {NAMESPACE}


def test_bindings_name_the_chart_service_accounts(renderings):
    rendered = renderings["defaults"]
    accounts = {sa["metadata"]["name"] for sa in rendered.of_kind("ServiceAccount")}
    assert accounts == {OPERATOR, GATEWAY}
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for binding in rendered.of_kind(kind):
            assert binding["roleRef"]["name"] == binding["metadata"]["name"]
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": binding["metadata"]["name"],
                                            "namespace": NAMESPACE}]
    for kind, name in (("StatefulSet", OPERATOR), ("Deployment", GATEWAY)):
        assert rendered.one(kind, name)["spec"]["template"]["spec"]["serviceAccountName"] == name


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["defaults", *CI])
def test_the_charts_own_pods_are_admitted_under_restricted(helm: Helm, values):
    rendered = helm.template(*([values] if values else []))
    workloads = [doc for doc in rendered.documents if doc["kind"] in ("Deployment", "StatefulSet", "Job")]
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert restricted_violations(pod) == [], workload["metadata"]["name"]
