"""Fixtures for the controller tests: the operator as a subprocess against the real API
server, an artifact store in a temp dir, and helpers (tests/support/apiserver.py,
operator_process.py, store_layout.py) that play trainer, runner and kubelet.

One operator serves the whole session, watching only namespaces `ctl-*` (which this
`namespace` fixture makes), so it never reconciles the objects of other test packages, so each test pays only for its own objects. There is no kubelet: Pods the
Job and ReplicaSet controllers create stay Pending until a test patches their status,
exactly as a kubelet would report it. Every namespace here enforces Pod Security
"restricted", so each test that waits for a Pod also shows the operator's Pods admitted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tuneforge.local.controlplane import ControlPlane
from tuneforge.local.devstack import RESTRICTED_NAMESPACE_LABELS

from tests.support.apiserver import GROUP, VERSION, Kube, wait_for
from tests.support.operator_process import Operator


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def system_namespace(api_client: client.ApiClient) -> str:
    name = f"ctl-system-{uuid.uuid4().hex[:6]}"
    metadata = client.V1ObjectMeta(name=name, labels=RESTRICTED_NAMESPACE_LABELS)
    client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=metadata))
    return name


@pytest.fixture(scope="session")
def operator(control_plane: ControlPlane, store_root: Path, system_namespace: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = Operator(control_plane.kubeconfig, store_root, system_namespace, log, ["ctl-*"]).start()
    yield op
    op.stop()


@pytest.fixture
def namespace_prefix() -> str:
    """Test namespaces fall inside the operator's watch (`ctl-*`)."""
    return "ctl"


@pytest.fixture
def namespace_labels() -> dict[str, str]:
    return RESTRICTED_NAMESPACE_LABELS


@pytest.fixture(autouse=True)
def store_env(store_root: Path, system_namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test process sees the same settings as the operator (for tuneforge.apikeys)."""
    from tuneforge.config import settings

    monkeypatch.setenv("TUNEFORGE_STORE_ROOT", f"file://{store_root}")
    monkeypatch.setenv("TUNEFORGE_SYSTEM_NAMESPACE", system_namespace)
    settings.cache_clear()
    yield
    settings.cache_clear()  # the next tests must not see this package's environment


@pytest.fixture(scope="session")
def kube(api_client: client.ApiClient) -> Kube:
    return Kube(api_client)


@pytest.fixture
def base_model(kube: Kube, tmp_path: Path, operator: Operator) -> Iterator[str]:
    """A Ready BaseModel of its own, with no shared deployment to wait for. Its 8B
    parameters fit one 80 GB GPU, so a group of nodes trains it with ddp."""
    weights = tmp_path / "weights"
    weights.mkdir()
    name = f"bm-{uuid.uuid4().hex[:8]}"
    kube.create(None, "basemodels", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "BaseModel", "metadata": {"name": name},
        "spec": {"source": {"uri": f"file://{weights}"}, "sharedDeployment": False, "serving": {"engine": "cpu"},
                 "parameterCount": 8_000_000_000},
    })
    wait_for(lambda: kube.status(None, "basemodels", name).get("phase") == "Ready", 30, "BaseModel Ready", operator)
    yield name
    kube.custom.delete_cluster_custom_object(GROUP, VERSION, "basemodels", name)
