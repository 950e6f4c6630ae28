"""Two operator replicas with kopf peering: only the higher-priority one acts, and the
other takes over when it dies.

kopf does not install its peering CRD (its docs ship the YAML); this module installs the
namespaced `KopfPeering` CRD of group kopf.dev, as a cluster running tuneforge with
`--namespace` must, and creates the peering object both replicas share. The replicas
watch a namespace outside `ctl-*`, so the session's standalone operator stays out.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tuneforge.local.controlplane import ControlPlane

from tests.support.apiserver import Kube, wait_for
from tests.support.operator_process import Operator
from tests.support.store_layout import chat_example, upload

pytestmark = pytest.mark.integration
PEERING_LIFETIME = 5
"""Seconds until a replica's keep-alive is stale: the standby takes over this long after
the active replica's last keep-alive (production keeps kopf's 60)."""

KOPF_PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {
        "scope": "Namespaced",
        "group": "kopf.dev",
        "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
        }],
    },
}


@pytest.fixture
def peering_namespace(api_client: client.ApiClient, kube: Kube) -> Iterator[tuple[str, str]]:
    """A namespace with a KopfPeering object in it; yields (namespace, peering name)."""
    extensions = client.ApiextensionsV1Api(api_client)
    try:
        extensions.create_custom_resource_definition(KOPF_PEERING_CRD)
    except client.ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> bool:
        crd = extensions.read_custom_resource_definition("kopfpeerings.kopf.dev")
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, 30, "KopfPeering CRD established")
    namespace, peering = f"peer-{uuid.uuid4().hex[:8]}", "tuneforge-test"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    kube.custom.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", {
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": peering}})
    yield namespace, peering
    kube.core.delete_namespace(namespace, propagation_policy="Background")
    extensions.delete_custom_resource_definition("kopfpeerings.kopf.dev")


def test_only_the_higher_priority_replica_acts_until_it_dies(kube: Kube, control_plane: ControlPlane,
                                                             store_root: Path, system_namespace: str, tmp_path: Path,
                                                             peering_namespace: tuple[str, str]) -> None:
    namespace, peering = peering_namespace
    base = f"bm-{uuid.uuid4().hex[:8]}"
    kube.create(None, "basemodels", {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel",
                                     "metadata": {"name": base},
                                     "spec": {"source": {"uri": f"file://{tmp_path}"}, "sharedDeployment": False}})
    upload(store_root, namespace, "file-peering0001", [chat_example(i) for i in range(10)])

    def replica(priority: int) -> Operator:
        return Operator(control_plane.kubeconfig, store_root, system_namespace, tmp_path / f"op-{priority}.log",
                        [namespace], peering=peering, priority=priority, peering_lifetime=PEERING_LIFETIME)

    def peers() -> dict:
        return kube.custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings",
                                                        peering).get("status") or {}

    def fine_tuning_job() -> str:
        name = f"ftjob-{uuid.uuid4().hex[:12]}"
        kube.create(namespace, "finetuningjobs", {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
                                                  "metadata": {"name": name},
                                                  "spec": {"baseModel": base, "trainingFile": "file-peering0001"}})
        return name

    def trainer_jobs(name: str) -> list[client.V1Job]:
        return kube.batch.list_namespaced_job(namespace, label_selector=f"tuneforge.io/fine-tuning-job={name}").items

    # The active replica registers first, so the standby finds it from its very first look.
    active, standby = replica(100), replica(10)
    try:
        active.start()
        wait_for(lambda: len(peers()) == 1, 30, "the active replica's keep-alive", active)
        standby.start()
        wait_for(lambda: len(peers()) == 2, 30, "the standby's keep-alive", standby)

        first = fine_tuning_job()
        wait_for(lambda: kube.status(namespace, "finetuningjobs", first).get("phase") == "Queued", 30, "Queued", active)
        ticks = active.reconciles("FineTuningJob")
        # Several more reconciles of the active replica: time enough for a standby that acted to show it.
        wait_for(lambda: active.reconciles("FineTuningJob") >= ticks + 4, 30, "more reconciles", active)
        assert standby.reconciles("FineTuningJob") == 0 and standby.reconciles("BaseModel") == 0
        assert len(trainer_jobs(first)) == 1
        events = kube.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={first}").items
        assert [e.reason for e in events if e.reason == "Queued"] == ["Queued"]
        assert sum(e.count or 1 for e in events if e.reason == "Queued") == 1

        active.kill()
        second = fine_tuning_job()
        wait_for(lambda: trainer_jobs(second), 45, "the standby taking over and creating the Job", standby)
        wait_for(lambda: kube.status(namespace, "finetuningjobs", second).get("phase") == "Queued", 30, "Queued",
                 standby)
        assert standby.reconciles("FineTuningJob") > 0
        assert len(trainer_jobs(first)) == 1 and len(trainer_jobs(second)) == 1
    finally:
        active.kill()
        standby.stop()
        kube.custom.delete_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", base)
