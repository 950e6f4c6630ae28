"""The local platform of `make dev` for the end-to-end tests: one per session.

It is the same `DevStack` that `make dev` starts (control plane, operator and gateway
subprocesses, the node agent running Pods as processes), with only the tiny model in the
catalog, a free gateway port, a state directory of its own and a small batch retry
budget. The tests drive it through the official `openai` client and `kubectl`, and reach
under it only to do what a user or a failing machine would: kill the operator, kill a
Pod's process (the helpers for that are in tests/support/devstack.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from kubernetes import client

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.api.v1alpha1.basemodel import model_id_of
from tuneforge.local.devstack import TINY, DevStack, free_gateway_port

from tests.support.devstack import BATCH_RETRIES_PER_HOUR

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    stack = DevStack(state_dir=tmp_path_factory.mktemp("dev"), gateway_port=free_gateway_port(), models=(TINY,),
                     poll_interval=1.0, status_interval=2.0, autoscale_interval=1.0,
                     batch_retries_per_hour=BATCH_RETRIES_PER_HOUR)
    with stack:
        yield stack


@pytest.fixture(scope="session")
def openai_client(dev_stack: DevStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=dev_stack.base_url, api_key=dev_stack.api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model_id(dev_stack: DevStack) -> str:
    """The id users call the tiny model by in every API (its BaseModel's model id)."""
    basemodel = client.CustomObjectsApi(dev_stack.api_client).get_cluster_custom_object(
        GROUP, VERSION, "basemodels", TINY)
    return model_id_of(basemodel)
