"""`helm install` of the chart into a real control plane, then the operator and the gateway
run exactly as installed (command, args, settings ConfigMap, env) under the chart's
ServiceAccounts: a file upload and a FineTuningJob through the gateway, the catalog's
shared deployment, a batch started and cancelled, and two peering replicas. Any permission
the chart's RBAC lacks shows up as a failed step and as a 403 in the logs.

There is no kubelet, so the installed Pods never run; their containers run here as local
processes instead, with the artifact-store claim mapped to a temporary directory.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from tuneforge.gateway import keys
from tuneforge.local.controlplane import ControlPlane, free_port
from tuneforge.weights import SMOLLM2_GGUF_URI

from tests.integration.gateway.gateway_testkit import batch_lines, training_lines
from tests.support.apiserver import Kube, service_account_kubeconfig, wait_for
from tests.support.helm import CHART, NAMESPACE, RELEASE, Helm

pytestmark = pytest.mark.integration
BASE_MODEL = "smollm2-135m-instruct"
OPERATOR, GATEWAY, SETTINGS = f"{RELEASE}-operator", f"{RELEASE}-gateway", f"{RELEASE}-settings"
VALUES = {
    "operator": {"pollInterval": 0.5, "statusInterval": 1},
    "hardwareProfiles": [{"name": "cpu-small", "displayName": "CPU", "cpu": "2", "memory": "4Gi", "costPerHour": 0.1}],
    "defaultHardwareProfile": "cpu-small",
    "baseModels": [{"name": BASE_MODEL, "spec": {
        "source": {"uri": SMOLLM2_GGUF_URI}, "provider": "HuggingFaceTB", "maxContextLength": 2048,
        "serving": {"engine": "cpu", "replicas": 1}}}],
}


@dataclass
class LocalContainer:
    """One container of an installed Pod template, run as a local process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    metrics_port: int = 0
    process: subprocess.Popen | None = None

    def start(self) -> "LocalContainer":
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=open(self.log, "ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv, env=self.env, capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def local_container(container: dict, configmaps: dict[str, dict[str, str]], fields: dict[str, str],
                    overrides: dict[str, str], kubeconfig: Path, log: Path, files: dict[str, Path]) -> LocalContainer:
    """The container's process as the kubelet would start it: environment from its envFrom
    ConfigMaps and env list (fieldRefs from `fields`), `$(VAR)` expanded in args. The image's
    `tuneforge` and `python` are this interpreter; mounted files come from `files`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNEFORGE_") and key != "KUBECONFIG"}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    env.update(overrides, KUBECONFIG=str(kubeconfig))
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in container.get("args", [])]
    command = container["command"]
    if command == ["tuneforge"]:
        argv = [sys.executable, "-m", "tuneforge", *args]
    else:
        assert command[0] == "python", command
        argv = [sys.executable, *(str(files.get(part, part)) for part in command[1:]), *args]
    return LocalContainer(container["name"], argv, env, log)


def _set_option(argv: list[str], option: str, value: str) -> list[str]:
    """Moves a listening port off the Pod's fixed one: two replicas share this machine."""
    index = argv.index(option)
    return [*argv[:index + 1], value, *argv[index + 2:]]


@dataclass
class Installed:
    plane: ControlPlane
    api: client.ApiClient
    kube: Kube
    manifest: list[dict]


@pytest.fixture(scope="module")
def installed(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    state = tmp_path_factory.mktemp("chart-plane")
    values = state / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    with ControlPlane(state_dir=state / "plane", with_controller_manager=True) as plane:
        helm.run("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace", "-f", str(values),
                 kubeconfig=plane.kubeconfig)
        manifest = helm.run("get", "manifest", RELEASE, "--namespace", NAMESPACE, kubeconfig=plane.kubeconfig).stdout
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        try:
            yield Installed(plane, api, Kube(api), [d for d in yaml.safe_load_all(manifest) if d])
        finally:
            api.close()


def test_helm_install_creates_every_object(installed: Installed, helm: Helm):
    status = helm.run("status", RELEASE, "--namespace", NAMESPACE, "-o", "json", kubeconfig=installed.plane.kubeconfig)
    assert '"status":"deployed"' in status.stdout.replace(" ", "")
    crds = installed.plane.kubectl("get", "crd", "-o", "name").stdout.split()
    assert set(crds) >= {f"customresourcedefinition.apiextensions.k8s.io/{name}" for name in (
        "basemodels.tuneforge.io", "finetuningjobs.tuneforge.io", "modeldeployments.tuneforge.io",
        "batchjobs.tuneforge.io", "clusterkopfpeerings.kopf.dev")}
    for document in installed.manifest:
        kind, name = document["kind"], document["metadata"]["name"]
        namespace = ["-n", document["metadata"]["namespace"]] if "namespace" in document["metadata"] else []
        installed.plane.kubectl("get", kind, name, *namespace)
    kube = installed.kube
    assert kube.apps.read_namespaced_stateful_set(OPERATOR, NAMESPACE).spec.replicas == 2
    assert kube.get(None, "basemodels", BASE_MODEL)["spec"]["source"]["uri"] == SMOLLM2_GGUF_URI


@dataclass
class Platform:
    installed: Installed
    operators: list[LocalContainer]
    gateway: LocalContainer
    gateway_url: str
    store: Path

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()[-4000:]}" for p in [*self.operators, self.gateway])


@pytest.fixture(scope="module")
def platform(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    kube, plane = installed.kube, installed.plane
    work = tmp_path_factory.mktemp("chart-platform")
    configmaps = {cm.metadata.name: cm.data for cm in kube.core.list_namespaced_config_map(NAMESPACE).items}
    peering_script = work / "ensure_peering.py"
    peering_script.write_text(configmaps[f"{OPERATOR}-peering"]["ensure_peering.py"])
    files = {"/etc/tuneforge/peering/ensure_peering.py": peering_script}
    # The store claim, mounted at <mountRoot>/<claim> in the Pods, is a local directory here.
    overrides = {"TUNEFORGE_PVC_MOUNT_ROOT": str(work / "pvc"), "TUNEFORGE_CACHE_DIR": str(work / "cache"),
                 "TUNEFORGE_BIND_HOST": "127.0.0.1"}
    (work / "pvc" / "tuneforge-store").mkdir(parents=True)
    operator_config = service_account_kubeconfig(plane, NAMESPACE, OPERATOR, work / "operator.kubeconfig")
    gateway_config = service_account_kubeconfig(plane, NAMESPACE, GATEWAY, work / "gateway.kubeconfig")

    statefulset = client.ApiClient().sanitize_for_serialization(kube.apps.read_namespaced_stateful_set(OPERATOR, NAMESPACE))
    pod = statefulset["spec"]["template"]["spec"]
    operators = []
    for ordinal in (0, 1):
        fields = {"metadata.labels['apps.kubernetes.io/pod-index']": str(ordinal)}
        init = local_container(pod["initContainers"][0], configmaps, fields, overrides, operator_config,
                               work / f"init-{ordinal}.log", files)
        result = init.run()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ClusterKopfPeering tuneforge" in result.stdout
        operator = local_container(pod["containers"][0], configmaps, fields, overrides, operator_config,
                                   work / f"operator-{ordinal}.log", files)
        operator.name = f"operator-{ordinal}"
        operator.metrics_port = free_port()
        operator.argv = _set_option(operator.argv, "--metrics-port", str(operator.metrics_port))
        operator.argv = _set_option(operator.argv, "--liveness", f"http://127.0.0.1:{free_port()}/healthz")
        operators.append(operator)

    deployment = client.ApiClient().sanitize_for_serialization(kube.apps.read_namespaced_deployment(GATEWAY, NAMESPACE))
    port = free_port()
    gateway = local_container(deployment["spec"]["template"]["spec"]["containers"][0], configmaps, {},
                              {**overrides, "TUNEFORGE_GATEWAY_PORT": str(port),
                               "TUNEFORGE_GATEWAY_METRICS_PORT": str(free_port())}, gateway_config,
                              work / "gateway.log", files)
    store = work / "pvc" / "tuneforge-store" / "store"
    running = Platform(installed, operators, gateway, f"http://127.0.0.1:{port}", store)
    try:
        # The higher ordinal starts first and acts; ordinal 0 finds it and stands by.
        operators[1].start()
        wait_for(lambda: len(_peers(kube)) == 1, 60, "operator-1's peering keep-alive")
        operators[0].start()
        gateway.start()
        wait_for(lambda: _healthy(running.gateway_url), 60, "the gateway answering /healthz")
        yield running
    finally:
        for process in [gateway, *operators]:
            process.stop()


def _peers(kube: Kube) -> dict:
    return kube.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "tuneforge").get("status") or {}


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_replicas_register_with_distinct_priorities(platform: Platform):
    kube = platform.installed.kube
    wait_for(lambda: len(_peers(kube)) == 2, 60, "both replicas' keep-alives")
    assert sorted(peer["priority"] for peer in _peers(kube).values()) == [0, 1]
    # kopf starts a peering replica paused; only the highest priority resumes.
    assert "Resuming operations" in platform.operators[1].output()
    assert "Resuming operations" not in platform.operators[0].output()


def test_catalog_model_is_ready_with_its_shared_deployment(platform: Platform):
    kube = platform.installed.kube
    wait_for(lambda: kube.status(None, "basemodels", BASE_MODEL).get("phase") == "Ready", 90,
             f"BaseModel {BASE_MODEL} Ready\n{platform.logs()}")
    wait_for(lambda: _exists(kube.apps.read_namespaced_deployment, BASE_MODEL, NAMESPACE), 60,
             f"the shared serving Deployment\n{platform.logs()}")
    kube.core.read_namespaced_service(BASE_MODEL, NAMESPACE)
    kube.core.read_namespaced_config_map(f"{BASE_MODEL}-serving", NAMESPACE)


def _exists(read, *args) -> bool:
    try:
        read(*args)
        return True
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise


@pytest.fixture(scope="module")
def tenant(platform: Platform) -> Iterator[tuple[str, openai.OpenAI]]:
    from tuneforge.config import settings

    api = platform.installed.api
    name = "team-a"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    previous = os.environ.get("TUNEFORGE_SYSTEM_NAMESPACE")
    os.environ["TUNEFORGE_SYSTEM_NAMESPACE"] = NAMESPACE
    settings.cache_clear()
    try:
        key = keys.create_key(api, namespace=name, scopes=["*"], description="chart test")
    finally:
        if previous is None:
            os.environ.pop("TUNEFORGE_SYSTEM_NAMESPACE")
        else:
            os.environ["TUNEFORGE_SYSTEM_NAMESPACE"] = previous
        settings.cache_clear()
    yield name, openai.OpenAI(base_url=f"{platform.gateway_url}/v1", api_key=key, max_retries=0, timeout=60)


def test_upload_and_fine_tuning_job_through_the_gateway(platform: Platform, tenant):
    namespace, api = tenant
    kube = platform.installed.kube
    training = api.files.create(file=("train.jsonl", io.BytesIO(training_lines())), purpose="fine-tune")
    assert training.status == "processed", platform.logs()
    stored = platform.store / namespace / "files" / training.id / "content"
    assert stored.read_bytes() == training_lines()

    job = api.fine_tuning.jobs.create(model=BASE_MODEL, training_file=training.id, suffix="chart")
    assert job.status == "validating_files"
    trainer = wait_for(lambda: kube.job(namespace, f"{job.id}-trainer"), 90,
                       f"the trainer Job of {job.id}\n{platform.logs()}")
    container = trainer.spec.template.spec.containers[0]
    assert container.image == "ghcr.io/tuneforge/trainer:0.1.0"
    # The chart's default hardware profile reached the operator.
    assert container.resources.requests == {"cpu": "2", "memory": "4Gi"}
    wait_for(lambda: api.fine_tuning.jobs.retrieve(job.id).status == "queued", 30, "queued")
    assert [j.id for j in api.fine_tuning.jobs.list()] == [job.id]

    # The management API: the chart's hardware profiles, a job's logs (trainer Pods and
    # their log), stopping and deleting the job.
    management = httpx.Client(base_url=f"{platform.gateway_url}/api/v1/fine-tuning", timeout=30,
                              headers={"Authorization": f"Bearer {api.api_key}"})
    with management:
        hardware = management.get("/hardware")
        assert hardware.status_code == 200 and "cpu-small" in hardware.text, hardware.text
        logs = management.get(f"/jobs/{job.id}/logs")
        assert logs.status_code == 200, logs.text
        assert management.post(f"/jobs/{job.id}/stop").status_code == 200
        wait_for(lambda: api.fine_tuning.jobs.retrieve(job.id).status == "paused", 60, f"paused\n{platform.logs()}")
        deleted = management.delete(f"/jobs/{job.id}")
        assert deleted.status_code == 204, deleted.text
    wait_for(lambda: not _exists(kube.custom.get_namespaced_custom_object, "tuneforge.io", "v1alpha1", namespace,
                                 "finetuningjobs", job.id), 30, "the job deleted")


def test_batch_starts_and_cancels(platform: Platform, tenant):
    namespace, api = tenant
    kube = platform.installed.kube
    wait_for(lambda: _exists(kube.apps.read_namespaced_deployment, BASE_MODEL, NAMESPACE), 60, "shared deployment")
    source = api.files.create(file=("batch.jsonl", io.BytesIO(batch_lines(model=BASE_MODEL))), purpose="batch")
    batch = api.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(lambda: kube.job(namespace, f"{batch.id}-runner"), 90, f"the runner Job\n{platform.logs()}")
    system_keys = f"tuneforge.io/batch-job={batch.id}"
    assert _exists(kube.core.read_namespaced_secret, f"{batch.id}-api-key", namespace)
    assert kube.core.list_namespaced_secret(NAMESPACE, label_selector=system_keys).items

    api.batches.cancel(batch.id)
    wait_for(lambda: api.batches.retrieve(batch.id).status == "cancelled", 90, f"cancelled\n{platform.logs()}")
    wait_for(lambda: not kube.core.list_namespaced_secret(NAMESPACE, label_selector=system_keys).items, 30,
             "the runner's key revoked")
    # The key's hash goes first, then the Secret handing it to the runner (one reconcile, two calls).
    wait_for(lambda: not _exists(kube.core.read_namespaced_secret, f"{batch.id}-api-key", namespace), 30,
             "the runner's key Secret deleted")


def _reconciles(metrics_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "tuneforge_reconciles_total")


def test_only_the_highest_ordinal_reconciled(platform: Platform):
    standby, active = platform.operators
    assert _reconciles(active.metrics_port) > 0
    assert _reconciles(standby.metrics_port) == 0


def test_no_request_was_forbidden(platform: Platform):
    """Runs last: every step above happened under the chart's RBAC without a refusal."""
    time.sleep(1)
    for process in [*platform.operators, platform.gateway]:
        assert process.process.poll() is None, f"{process.name} exited\n{process.output()[-4000:]}"
        log = process.output()
        # A status 403 as its own word: neither a port such as 49403 in an address nor the
        # milliseconds of a log line's time (",403") is one.
        assert not re.search(r"(?<![,.:])\b403\b", log) and "Forbidden" not in log and "forbidden" not in log, \
            log[-6000:]
