"""`make dev`: the whole platform on one machine, and the backbone of the e2e tests.

It starts, in order: the control plane (state under `.dev/controlplane`, so a restart
keeps every object), the operator and the gateway as `tuneforge` subprocesses, and the
node agent in this process. Then it makes sure of the catalog (SmolLM2-135M-Instruct and
the tiny test model, each with its shared CPU deployment), a dev tenant namespace and a
dev API key, waits until everything is ready, and writes `.dev/env`. The system and
tenant namespaces enforce Pod Security "restricted".

Everything a restart must keep lives under the state directory: etcd's data, the
artifact store (`store/`: files, checkpoints, adapters, batch outputs), the dev key, the
Pods' directories. Model weights stay in the shared cache (~/.cache/tuneforge).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tuneforge import apikeys
from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.api.v1alpha1.labels import RESTRICTED_NAMESPACE_LABELS, Label
from tuneforge.config import Settings
from tuneforge.local.controlplane import ControlPlane, free_port
from tuneforge.local.node import NodeAgent
from tuneforge.weights import SMOLLM2_GGUF_URI, build_tiny_model, parameter_count

log = logging.getLogger("tuneforge.local.dev")

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY = "tiny-smollm2"
TINY_ID = "tuneforge/tiny-smollm2"
"""The catalog's resource names (what manifests reference and `models` selects) and the model
ids the APIs call them by; the tiny model is tuneforge's own, SmolLM2's shape at random
weights."""
DEV_TENANT = "dev"
LOCAL_CPU_PROFILE = "local-cpu"
LOCAL_HARDWARE_PROFILES = [{
    "name": LOCAL_CPU_PROFILE,
    "displayName": "This machine's CPUs",
    "gpuCount": 0,
    "maxNodes": 2,
    "costPerHour": 0,
}]
"""The hardware the local platform offers, at no cost: CPU Pods, up to two of them training
as one group (the node agent gives them the names an Indexed Job's Pods have on a
cluster). It is the default profile, so cost estimates work out of the box. A
TUNEFORGE_HARDWARE_PROFILES (and TUNEFORGE_DEFAULT_HARDWARE_PROFILE) of the caller's own wins."""
READY_TIMEOUT_SECONDS = 900.0


def hardware_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The hardware settings the local operator and gateway get on top of `environ`: none
    when the caller configures profiles of their own, else LOCAL_HARDWARE_PROFILES with
    local-cpu as the default (unless the caller names another)."""
    if "TUNEFORGE_HARDWARE_PROFILES" in environ:
        return {}
    return {"TUNEFORGE_HARDWARE_PROFILES": json.dumps(LOCAL_HARDWARE_PROFILES),
            "TUNEFORGE_DEFAULT_HARDWARE_PROFILE": environ.get("TUNEFORGE_DEFAULT_HARDWARE_PROFILE", LOCAL_CPU_PROFILE)}


class DevStackError(RuntimeError):
    """A component did not come up; the message says which and where its log is."""


def base_model(name: str, model_id: str, uri: str, display_name: str, description: str,
               parameters: int | None) -> dict:
    """A catalog entry served by a shared multi-LoRA CPU deployment."""
    spec: dict[str, Any] = {
        "modelId": model_id,
        "source": {"uri": uri},
        "displayName": display_name,
        "description": description,
        "fineTunable": True,
        "maxContextLength": 2048,
        "supportedTasks": ["chat"],
        "serving": {"engine": "cpu", "maxAdapters": 8, "replicas": 1},
        "sharedDeployment": True,
    }
    if parameters:
        spec["parameterCount"] = parameters
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BaseModel", "metadata": {"name": name}, "spec": spec}


def tiny_model_dir(settings: Settings) -> Path:
    return settings.cache_dir / "models" / "tiny-smollm2-seed0"


def catalog(settings: Settings, models: tuple[str, ...]) -> list[dict]:
    """The BaseModels of the dev catalog; the tiny model is built (once) on the way."""
    entries = []
    if SMOLLM2 in models:
        entries.append(base_model(SMOLLM2, SMOLLM2_ID, SMOLLM2_GGUF_URI, "SmolLM2 135M Instruct",
                                  "A small instruction-tuned model; fine-tunes on a laptop CPU.", 134515008))
    if TINY in models:
        directory = build_tiny_model(tiny_model_dir(settings))
        entries.append(base_model(TINY, TINY_ID, f"file://{directory}", "Tiny SmolLM2 (random weights)",
                                  "SmolLM2's tokenizer and architecture at a few MB: for tests and demos "
                                  "of the plumbing, not for answers.", parameter_count(directory)))
    return entries


def env_file_text(values: Mapping[str, str]) -> str:
    return "".join(f"export {key}={value}\n" for key, value in values.items())


@dataclass
class Component:
    """One `tuneforge` subprocess with its log file; killable and restartable (the e2e
    tests kill the operator mid-job)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> "Component":
        with open(self.log, "ab") as log_file:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, as when a machine dies."""
        if self.alive:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class DevStack:
    state_dir: Path
    gateway_port: int = 8000
    models: tuple[str, ...] = (SMOLLM2, TINY)
    tenant: str = DEV_TENANT
    poll_interval: float = 2.0
    status_interval: float = 5.0
    autoscale_interval: float | None = None
    """The operator's `--autoscale-interval`; None keeps its default."""
    batch_retries_per_hour: int | None = None
    """The operator's `--batch-retries-per-hour`; None keeps its default. The chaos tests
    lower it to run a batch out of retries in a minute instead of a window's worth."""
    plane: ControlPlane | None = None
    api_client: client.ApiClient | None = None
    operator: Component | None = None
    gateway: Component | None = None
    agent: NodeAgent | None = None
    api_key: str = ""
    settings: Settings = field(default_factory=Settings)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}/v1"

    @property
    def store_dir(self) -> Path:
        return self.state_dir / "store"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    @property
    def ready_marker(self) -> Path:
        return self.state_dir / "ready"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, wait_ready: bool = True) -> "DevStack":
        self.state_dir = self.state_dir.resolve()
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.ready_marker.unlink(missing_ok=True)
        self._log_to_file()
        try:
            self.plane = ControlPlane(state_dir=self.state_dir / "controlplane", with_controller_manager=True).start()
            self.plane.apply_crds()
            self.api_client = config.new_client_from_config(config_file=str(self.plane.kubeconfig))
            for namespace in (self.settings.system_namespace, self.tenant):
                self._ensure_namespace(namespace)
            env = self._component_env()
            tuneforge = [sys.executable, "-m", "tuneforge"]
            self.operator = Component("operator", [
                *tuneforge, "operator", "--standalone", "--liveness", "", "--metrics-port", "0",
                "--poll-interval", str(self.poll_interval), "--status-interval", str(self.status_interval),
                *(["--batch-retries-per-hour", str(self.batch_retries_per_hour)] if self.batch_retries_per_hour else []),
                *(["--autoscale-interval", str(self.autoscale_interval)] if self.autoscale_interval else []),
            ], env, self.state_dir / "logs" / "operator.log").start()
            self.gateway = Component("gateway", [
                *tuneforge, "gateway", "--host", "127.0.0.1", "--port", str(self.gateway_port),
            ], {**env, "TUNEFORGE_GATEWAY_METRICS_PORT": "0"}, self.state_dir / "logs" / "gateway.log").start()
            self.agent = NodeAgent(self.api_client, state_dir=self.state_dir / "node", settings=self.settings,
                                   cluster_ca=self.plane.cluster_ca).start()
            self._ensure_catalog()
            self.api_key = self._ensure_api_key()
            if wait_ready:
                self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Pods first (their processes get SIGTERM), then gateway and operator, then the
        control plane; the state directory stays."""
        self.ready_marker.unlink(missing_ok=True)
        if self.agent is not None:
            self.agent.stop()
        for component in (self.gateway, self.operator):
            if component is not None:
                component.stop()
        if self.api_client is not None:
            self.api_client.close()
        if self.plane is not None:
            self.plane.stop()

    def __enter__(self) -> "DevStack":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- pieces ------------------------------------------------------------------------

    def _log_to_file(self) -> None:
        handler = logging.FileHandler(self.state_dir / "logs" / "node.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
        logger = logging.getLogger("tuneforge.local")
        if not any(getattr(h, "baseFilename", None) == handler.baseFilename for h in logger.handlers):
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)

    def _component_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.plane.kubeconfig),
            "TUNEFORGE_STORE_ROOT": f"file://{self.store_dir}",
            "TUNEFORGE_SYSTEM_NAMESPACE": self.settings.system_namespace,
            "TUNEFORGE_GATEWAY_INTERNAL_URL": self.base_url,
            "TUNEFORGE_CACHE_DIR": str(self.settings.cache_dir),
            **hardware_env(os.environ),
            "PYTHONUNBUFFERED": "1",
        }

    def _ensure_namespace(self, name: str) -> None:
        """The namespace, enforcing the restricted profile also when a state directory from
        before it did already holds the namespace."""
        core = client.CoreV1Api(self.api_client)
        metadata = {"name": name, "labels": RESTRICTED_NAMESPACE_LABELS}
        try:
            core.create_namespace({"metadata": metadata}, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.patch_namespace(name, {"metadata": {"labels": RESTRICTED_NAMESPACE_LABELS}}, _preload_content=False)

    def _ensure_catalog(self) -> None:
        custom = client.CustomObjectsApi(self.api_client)
        for entry in catalog(self.settings, self.models):
            name = entry["metadata"]["name"]
            try:
                custom.create_cluster_custom_object(GROUP, VERSION, "basemodels", entry, _preload_content=False)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                custom.patch_cluster_custom_object(GROUP, VERSION, "basemodels", name, {"spec": entry["spec"]},
                                                   _preload_content=False)

    def _ensure_api_key(self) -> str:
        """The dev key, kept in the state directory so `.dev/env` stays valid across restarts
        (its hash lives in a Secret, like every key)."""
        key_file = self.state_dir / "api-key"
        key = key_file.read_text().strip() if key_file.exists() else apikeys.generate_key()
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        body = apikeys.key_secret(key, tenant=self.tenant, scopes=["*"], description="make dev")
        body["metadata"]["namespace"] = self.settings.system_namespace
        try:
            client.CoreV1Api(self.api_client).create_namespaced_secret(self.settings.system_namespace, body,
                                                                       _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
        return key

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Until the gateway answers and every catalog model's shared deployment is Ready."""
        deadline = time.monotonic() + timeout
        custom = client.CustomObjectsApi(self.api_client)
        pending = list(self.models)
        while True:
            for component in (self.operator, self.gateway):
                if not component.alive:
                    raise DevStackError(f"{component.name} exited; its log {component.log} ends with:\n"
                                        f"{component.tail()}")
            gateway_up = _http_ok(f"http://127.0.0.1:{self.gateway_port}/healthz")
            pending = [name for name in pending if not self._deployment_ready(custom, name)]
            if gateway_up and not pending:
                break
            if time.monotonic() > deadline:
                raise DevStackError(f"not ready after {timeout:.0f}s: gateway {'up' if gateway_up else 'down'}, "
                                    f"deployments not ready: {pending} (logs under {self.state_dir / 'logs'})")
            time.sleep(1.0)
        self.write_env()
        self.ready_marker.write_text(f"{os.getpid()}\n")

    def _deployment_ready(self, custom: client.CustomObjectsApi, name: str) -> bool:
        try:
            body = custom.get_namespaced_custom_object(GROUP, VERSION, self.settings.system_namespace,
                                                       "modeldeployments", name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        if (body.get("status") or {}).get("phase") != "Ready":
            return False
        # The phase may be what the operator saw before a restart; a Pod Ready now is what
        # lets the gateway route.
        pods = json.loads(client.CoreV1Api(self.api_client).list_namespaced_pod(
            self.settings.system_namespace, label_selector=f"{Label.MODEL_DEPLOYMENT}={name}",
            _preload_content=False).data)["items"]
        return any(
            not pod["metadata"].get("deletionTimestamp") and any(
                c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])
            for pod in pods
        )

    def write_env(self) -> None:
        values = {
            "OPENAI_BASE_URL": self.base_url,
            "OPENAI_API_KEY": self.api_key,
            "KUBECONFIG": str(self.plane.kubeconfig),
            "TUNEFORGE_NAMESPACE": self.tenant,
            "PATH": f"{self.plane.bin_dir}:{Path(sys.executable).parent}:$PATH",
        }
        tmp = self.env_file.with_suffix(".tmp")
        tmp.write_text(env_file_text(values))
        tmp.chmod(0o600)
        os.replace(tmp, self.env_file)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# -- the `tuneforge dev` command ---------------------------------------------------------


def run_dev(state_dir: Path, port: int) -> int:
    """Foreground: up until Ctrl-C (or SIGTERM, which `make dev-down` sends)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    stack = DevStack(state_dir=state_dir, gateway_port=port)
    try:
        stack.start()
        print(f"tuneforge is ready after {time.monotonic() - started:.0f}s", flush=True)
        print(f"  OpenAI base URL  {stack.base_url}")
        print(f"  API key          {stack.api_key}   (tenant namespace {stack.tenant!r})")
        print(f"  models           {', '.join(stack.models)} (shared CPU deployments)")
        print(f"  source {stack.env_file}    # OPENAI_*, KUBECONFIG, TUNEFORGE_NAMESPACE, kubectl on PATH")
        print(f"  logs under {stack.state_dir / 'logs'}; state kept under {stack.state_dir}")
        print("Ctrl-C stops everything.", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        print("stopping tuneforge ...", flush=True)
    finally:
        stack.stop()
    return 0


def dev_up(state_dir: Path, port: int, timeout: float = READY_TIMEOUT_SECONDS) -> int:
    """Detached: `tuneforge dev` in the background, pid in `<state>/dev.pid`; returns once
    it is ready (or says why it is not)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    pid_file = state_dir / "dev.pid"
    if _running_pid(pid_file):
        print(f"tuneforge dev is already running (pid {_running_pid(pid_file)}); `make dev-down` stops it")
        return 1
    (state_dir / "ready").unlink(missing_ok=True)
    (state_dir / "logs").mkdir(exist_ok=True)
    log_path = state_dir / "logs" / "dev.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "tuneforge", "dev", "--state-dir", str(state_dir),
                                    "--port", str(port)], stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while not (state_dir / "ready").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            print(f"tuneforge dev did not come up; see {log_path}")
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            pid_file.unlink(missing_ok=True)
            return 1
        time.sleep(1.0)
    print(f"tuneforge is up (pid {process.pid}); `source {state_dir / 'env'}`; `make dev-down` stops it")
    return 0


def dev_down(state_dir: Path, timeout: float = 90.0) -> int:
    pid_file = state_dir / "dev.pid"
    pid = _running_pid(pid_file)
    if pid is None:
        print("tuneforge dev is not running")
        pid_file.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _alive(pid):
        print(f"tuneforge dev (pid {pid}) did not stop within {timeout:.0f}s")
        return 1
    pid_file.unlink(missing_ok=True)
    print("tuneforge dev stopped")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def free_gateway_port() -> int:
    return free_port()
