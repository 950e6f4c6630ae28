"""Integration fixtures: one real control plane per test session, a namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tuneforge.local.controlplane import ControlPlane


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager with tuneforge's CRDs installed."""
    plane = ControlPlane(state_dir=tmp_path_factory.mktemp("controlplane"), with_controller_manager=True)
    with plane:
        plane.apply_crds()
        previous = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(plane.kubeconfig)
        try:
            yield plane
        finally:
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """A kubernetes.client.ApiClient authenticated as the control plane's admin."""
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def namespace_prefix() -> str:
    """How `namespace` names begin; a test package overrides it to match what it watches."""
    return "t"


@pytest.fixture
def namespace_labels() -> dict[str, str]:
    """Labels of `namespace`; a test package overrides it (the controllers' tests enforce Pod
    Security "restricted" on theirs)."""
    return {}


@pytest.fixture
def namespace(api_client: client.ApiClient, namespace_prefix: str, namespace_labels: dict[str, str]) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    name = f"{namespace_prefix}-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=namespace_labels)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")
