"""Restart safety: an operator killed (SIGKILL) while reconciling 50 FineTuningJobs and
started again leaves exactly one trainer Job per FineTuningJob, and every status converges."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest
from kubernetes import client, watch

from tuneforge.local.controlplane import ControlPlane

from tests.support.apiserver import Kube, wait_for
from tests.support.operator_process import Operator
from tests.support.store_layout import chat_example, upload

pytestmark = pytest.mark.integration
N_JOBS = 50


def test_kill_and_restart_while_reconciling(kube: Kube, control_plane: ControlPlane, store_root: Path,
                                            system_namespace: str, tmp_path: Path) -> None:
    namespace = f"r-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    base = f"bm-{uuid.uuid4().hex[:8]}"
    kube.create(None, "basemodels", {"apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel",
                                     "metadata": {"name": base},
                                     "spec": {"source": {"uri": f"file://{tmp_path}"}, "sharedDeployment": False}})
    upload(store_root, namespace, "file-restart0001", [chat_example(i) for i in range(10)])
    names = [f"ftjob-{i:03d}{uuid.uuid4().hex[:6]}" for i in range(N_JOBS)]
    for name in names:
        kube.create(namespace, "finetuningjobs", {"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
                                                  "metadata": {"name": name},
                                                  "spec": {"baseModel": base, "trainingFile": "file-restart0001"}})

    def trainer_jobs() -> list[client.V1Job]:
        return kube.batch.list_namespaced_job(namespace, label_selector="app.kubernetes.io/component=trainer").items

    operator = Operator(control_plane.kubeconfig, store_root, system_namespace, tmp_path / "op.log", [namespace]).start()
    try:
        kill_at_first_trainer_job(kube, namespace, operator)
        killed_with = len(trainer_jobs())
        operator.start()

        def converged() -> bool:
            phases = [kube.status(namespace, "finetuningjobs", n).get("phase") for n in names]
            return all(p == "Queued" for p in phases)

        wait_for(converged, 120, "all 50 jobs Queued", operator)
        jobs = trainer_jobs()
        owners = Counter(j.metadata.owner_references[0].name for j in jobs)
        assert len(jobs) == N_JOBS and set(owners) == set(names) and max(owners.values()) == 1
        configmaps = kube.core.list_namespaced_config_map(namespace, label_selector="app.kubernetes.io/component=trainer")
        assert len(configmaps.items) == N_JOBS
        assert killed_with < N_JOBS, "the operator was killed only after it had finished; nothing was tested"
    finally:
        operator.stop()
        kube.custom.delete_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", base)
        kube.core.delete_namespace(namespace, propagation_policy="Background")


def kill_at_first_trainer_job(kube: Kube, namespace: str, operator: Operator) -> None:
    """Kills the operator the moment its first trainer Job is announced by a watch: polling
    let a fast operator create all of them between two looks, leaving nothing half done."""
    jobs = watch.Watch()
    for _ in jobs.stream(kube.batch.list_namespaced_job, namespace, timeout_seconds=60,
                         label_selector="app.kubernetes.io/component=trainer"):
        operator.kill()
        jobs.stop()
        return
    raise AssertionError(f"no trainer Job within 60 s\noperator log:\n{operator.tail()}")
