"""Which objects the operator blocks the deletion of, against the real API server.

Only a BatchJob needs the operator at deletion (its key lives in the system namespace,
out of reach of ownerReferences); everything else carries no finalizer, so deleting it
never waits for a running operator, and a finalizer left by an older operator goes.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kubernetes import client

from tuneforge.api.v1alpha1.labels import FINALIZER

from tests.integration.controllers.test_finetuning import PLURAL, ftjob, new_job, phase_is
from tests.support.apiserver import Kube, wait_for
from tests.support.operator_process import Operator
from tests.support.store_layout import chat_example, upload

pytestmark = pytest.mark.integration


def _gone(kube: Kube, namespace: str, name: str) -> bool:
    try:
        kube.get(namespace, PLURAL, name)
    except client.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_a_reconciled_job_and_its_base_model_carry_no_finalizer(kube: Kube, operator: Operator, namespace: str,
                                                               base_model: str, store_root: Path) -> None:
    name = new_job(kube, store_root, namespace, base_model)
    wait_for(phase_is(kube, namespace, name, "Queued"), 30, "Queued", operator)
    wait_for(lambda: kube.status(None, "basemodels", base_model).get("phase") == "Ready", 30, "base model Ready",
             operator)

    assert not kube.get(namespace, PLURAL, name)["metadata"].get("finalizers")
    assert not kube.get(None, "basemodels", base_model)["metadata"].get("finalizers")
    kube.custom.delete_namespaced_custom_object("tuneforge.io", "v1alpha1", namespace, PLURAL, name)
    assert _gone(kube, namespace, name), "the deletion waited for something"


def test_a_finalizer_left_by_an_older_operator_is_removed(kube: Kube, operator: Operator, namespace: str,
                                                          base_model: str, store_root: Path) -> None:
    file_id = f"file-{uuid.uuid4().hex[:12]}"
    upload(store_root, namespace, file_id, [chat_example(i) for i in range(12)])
    name = f"ftjob-{uuid.uuid4().hex[:10]}"
    body = ftjob(name, base_model, file_id)
    body["metadata"]["finalizers"] = [FINALIZER]
    kube.create(namespace, PLURAL, body)

    wait_for(lambda: not kube.get(namespace, PLURAL, name)["metadata"].get("finalizers"), 30,
             "the old finalizer removed", operator)
    wait_for(phase_is(kube, namespace, name, "Queued"), 30, "Queued", operator)
