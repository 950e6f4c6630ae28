"""The operator's API verbs (tuneforge.controllers.kube) against the real API server: a
create is idempotent, and a verb that leaves the answer unparsed still hands its
connection back to the pool, so a reconcile loop does not open a new TLS connection
for every write or check."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes.config import kube_config

from tuneforge.controllers import kube
from tuneforge.local.controlplane import ControlPlane


@pytest.fixture
def fresh_client(control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The operator's shared client, made anew from the control plane's kubeconfig (the
    client read KUBECONFIG when it was imported, before the control plane existed)."""
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(control_plane.kubeconfig))
    monkeypatch.setattr(kube, "_api", None)
    yield
    kube.api().close()


def _connections_opened() -> int:
    configuration = kube.api().configuration
    return kube.api().rest_client.pool_manager.connection_from_url(configuration.host).num_connections


def _job(namespace: str) -> dict:
    container = {"name": "main", "image": "busybox:1", "command": ["true"]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "verbs", "namespace": namespace},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}}


def test_writes_and_checks_reuse_one_connection(namespace: str, fresh_client: None) -> None:
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "verbs", "namespace": namespace},
                 "data": {"run.json": "{}"}}
    assert not kube.job_exists(namespace, "verbs")
    assert kube.create(configmap) is True
    assert kube.create(configmap) is False, "a second create of the same object is a 409, tolerated"
    assert kube.create(_job(namespace)) is True
    for _ in range(20):
        assert kube.job_exists(namespace, "verbs")
    kube.apply({**configmap, "data": {"run.json": '{"applied": true}'}})
    assert kube.core().read_namespaced_config_map("verbs", namespace).data == {"run.json": '{"applied": true}'}

    assert _connections_opened() == 1, "a verb kept its connection out of the pool"
