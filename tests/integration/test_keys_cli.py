"""`tuneforge keys` as a person runs it, against the real API server: what goes wrong is
said in one line that names the thing (a namespace that does not exist, a key revoked
already, RBAC, a cluster out of reach), and `--create-namespace` sets a tenant up."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tuneforge import apikeys
from tuneforge.api.v1alpha1.labels import RESTRICTED_NAMESPACE_LABELS, Label
from tuneforge.config import settings
from tuneforge.local.controlplane import ControlPlane, free_port

from tests.support.apiserver import service_account_kubeconfig, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system_namespace(api_client: client.ApiClient) -> str:
    name = settings().system_namespace
    try:
        client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    return name


def _keys(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneforge", "keys", *args], capture_output=True, text=True,
                          env={**os.environ, **env})


def _one_line_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """The error line of a failed command, after checking it is the only output."""
    assert result.returncode == code, result
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.rstrip("\n")


def _namespace(api_client: client.ApiClient, name: str) -> client.V1Namespace | None:
    try:
        return client.CoreV1Api(api_client).read_namespace(name)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _key_secrets(api_client: client.ApiClient, system: str, tenant: str) -> list[str]:
    secrets = client.CoreV1Api(api_client).list_namespaced_secret(
        system, label_selector=f"{Label.TENANT}={tenant}")
    return [s.metadata.name for s in secrets.items]


def test_create_for_a_missing_namespace_says_so_or_creates_it(api_client, system_namespace):
    tenant = f"team-{uuid.uuid4().hex[:8]}"
    assert _one_line_error(_keys("create", "--namespace", tenant)) == (
        f'error: namespace "{tenant}" does not exist; create it (kubectl create namespace {tenant}) '
        "or pass --create-namespace")
    assert _namespace(api_client, tenant) is None
    assert _key_secrets(api_client, system_namespace, tenant) == []

    # A scope typo creates nothing, not even the namespace.
    assert "unknown scope 'chatt'" in _one_line_error(
        _keys("create", "--namespace", tenant, "--create-namespace", "--scopes", "chatt"), code=2)
    assert _namespace(api_client, tenant) is None

    created = _keys("create", "--namespace", tenant, "--create-namespace", "--scopes", "chat")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith(apikeys.KEY_PREFIX) and created.stdout.count("\n") == 1
    assert created.stderr == f'created namespace "{tenant}" (Pod Security "restricted")\n'
    labels = _namespace(api_client, tenant).metadata.labels
    assert {k: labels.get(k) for k in RESTRICTED_NAMESPACE_LABELS} == RESTRICTED_NAMESPACE_LABELS
    assert _key_secrets(api_client, system_namespace, tenant) == [apikeys.secret_name(key)]

    again = _keys("create", "--namespace", tenant, "--create-namespace")
    assert again.returncode == 0 and again.stderr == ""
    assert len(_key_secrets(api_client, system_namespace, tenant)) == 2


def test_revoke_and_usage_errors_are_one_line(namespace, system_namespace):
    key = _keys("create", "--namespace", namespace).stdout.strip()
    assert _keys("revoke", "--key", key).stdout == f"revoked {apikeys.secret_name(key)}\n"
    assert _one_line_error(_keys("revoke", "--key", key)) == (
        f'error: no API key "{apikeys.secret_name(key)}" in namespace "{system_namespace}": revoked already, '
        "or not a key of this cluster")
    assert _one_line_error(_keys("list", "--create-namespace"), code=2) == (
        "error: --create-namespace goes with keys create")


def test_a_missing_system_namespace_is_named(namespace):
    assert _one_line_error(_keys("create", "--namespace", namespace,
                                 TUNEFORGE_SYSTEM_NAMESPACE="no-such-system")) == (
        'error: the system namespace "no-such-system" does not exist: install tuneforge first, or set '
        "TUNEFORGE_SYSTEM_NAMESPACE to the namespace it runs in")


def test_rbac_refusal_and_unreachable_cluster_are_one_line(control_plane: ControlPlane, namespace, system_namespace,
                                                           tmp_path: Path):
    wait_for(lambda: control_plane.kubectl("get", "serviceaccount", "default", "-n", namespace,
                                           check=False).returncode == 0, message="the default ServiceAccount")
    unprivileged = service_account_kubeconfig(control_plane, namespace, "default", tmp_path / "sa.kubeconfig")
    refused = _one_line_error(_keys("list", KUBECONFIG=str(unprivileged)))
    assert refused == (
        f"error: the Kubernetes API server answered 403 Forbidden: secrets is forbidden: User "
        f'"system:serviceaccount:{namespace}:default" cannot list resource "secrets" in API group "" in the '
        f'namespace "{system_namespace}"')

    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    server = f"https://127.0.0.1:{free_port()}"
    config["clusters"][0]["cluster"]["server"] = server
    (tmp_path / "gone.kubeconfig").write_text(yaml.safe_dump(config))
    assert _one_line_error(_keys("list", KUBECONFIG=str(tmp_path / "gone.kubeconfig"))) == (
        f"error: cannot reach the Kubernetes API server at {server}: [Errno 111] Connection refused")

    missing = _one_line_error(_keys("list", KUBECONFIG=str(tmp_path / "none.kubeconfig")))
    assert missing.startswith("error: no Kubernetes credentials (set KUBECONFIG, or run in a Pod): ")
