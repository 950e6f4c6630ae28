"""Where a chat request goes: model name -> ModelDeployment -> one of its ready Pods.

Pods are addressed by pod IP and the container port declared in the Pod spec (as KubeAI
does), not through a Service: that needs no kube-proxy, works on the local platform where
pod IPs are loopback addresses, and lets the gateway pick the replica that already holds
the requested LoRA adapter.

A catalog model is named by its model id or, as an alias, by its BaseModel resource name
(`catalog.Catalog`); the engines serve it under its model id only, so a request naming the
alias is sent on with the model id in its body (`Route.model`), and every response shows
the model id. A fine-tuned model (`ft:...`) is served by a ModelDeployment of the tenant
that lists it, or else by its base model's shared multi-LoRA deployment in the system
namespace. Either
way adapters are loaded at run time, on first use, through vLLM's `/v1/load_lora_adapter`
(the CPU engine speaks the same endpoint): a deployment's Pods load the adapters its spec
listed when they started, and one added later is loaded when first asked for, so editing
a deployment's adapters never restarts its Pods. Loads go to the Pod's port named
`adapters`, the adapter-loader sidecar, which checks the name against its source and
copies the adapter next to the engine; a Pod without one (an older serving Pod) takes
loads on its `http` port. The gateway remembers, per Pod, which adapters it loaded (an LRU
bounded by the deployment's maxAdapters, mirroring the engine's own eviction); if an
engine has forgotten one anyway (restart, eviction), the chat path reloads it and retries.

Every call to a serving Pod carries the deployment's serving token
(tuneforge.serving_auth), derived from the platform key the operator keeps in the system
namespace; the engines and the sidecar refuse calls without it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

import aiohttp

from tuneforge.api.v1alpha1.basemodel import model_id_of
from tuneforge.api.v1alpha1.finetuningjob import job_of_fine_tuned_model
from tuneforge.api.v1alpha1.labels import Label, PortName
from tuneforge.config import settings
from tuneforge.gateway.caching import RefreshingCache
from tuneforge.gateway.catalog import Catalog, fine_tuned_job
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.kube import Kube
from tuneforge.gateway.platform_key import platform_key
from tuneforge.jobfiles import adapter_source_uri
from tuneforge.serving_auth import bearer, deployment_token
from tuneforge.storage import StoreError, resolve_uri

DEFAULT_MAX_ADAPTERS = 8
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class Pod:
    uid: str
    name: str
    url: str
    """Base URL of the OpenAI API on the Pod, e.g. http://10.1.2.3:8000."""
    load_url: str
    """Base URL for runtime adapter loads: the adapter-loader sidecar, else `url`."""


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str


@dataclass
class Route:
    """A resolved model: the deployment's ready Pods and, for runtime-loaded adapters,
    the adapter to make sure of."""

    deployment: str
    model: str
    """The name the engine serves the requested model under; a request naming it otherwise
    (a catalog model's alias) is sent with this name instead."""
    pods: list[Pod]
    adapter: Adapter | None
    max_adapters: int
    token: str
    """The deployment's serving token, sent on every call to its Pods."""
    counter: itertools.count = field(default_factory=itertools.count)


def _ready_pods(pods: list[dict]) -> list[Pod]:
    ready = []
    for pod in pods:
        status, spec = pod.get("status") or {}, pod.get("spec") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if (pod["metadata"].get("deletionTimestamp") or status.get("phase") != "Running"
                or conditions.get("Ready") != "True" or not status.get("podIP")):
            continue
        ports = [port for container in spec.get("containers", []) for port in container.get("ports") or []]
        named = [port for port in ports if port.get("name") == "http"]
        port = (named or ports or [{"containerPort": DEFAULT_PORT}])[0]["containerPort"]
        loader = next((p["containerPort"] for p in ports if p.get("name") == PortName.ADAPTERS), port)
        ip = status["podIP"]
        ready.append(Pod(uid=pod["metadata"]["uid"], name=pod["metadata"]["name"],
                         url=f"http://{ip}:{port}", load_url=f"http://{ip}:{loader}"))
    return sorted(ready, key=lambda pod: pod.name)


def _listed_adapter(deployment: dict, model: str) -> Adapter | None:
    """The adapter `model` names in a deployment's own spec, or None for its base model."""
    for listed in deployment["spec"].get("adapters") or []:
        if listed.get("name") == model:
            uri = adapter_source_uri(settings().store_root, deployment["metadata"]["namespace"], listed["source"])
            return Adapter(name=model, path=adapter_path(uri))
    return None


def adapter_path(uri: str) -> str:
    """The path the serving engine loads the adapter from: a local path for file:// and
    pvc:// URIs (the Pods mount the store), the URI itself for object stores (the CPU
    engine and vLLM's adapter-loader sidecar fetch it)."""
    try:
        resolved = resolve_uri(uri)
    except StoreError as exc:
        raise OpenAIError(502, f"the adapter location {uri!r} cannot be resolved: {exc}", code="adapter_unavailable",
                          type="server_error") from exc
    return resolved.removeprefix("file://") if resolved.startswith("file://") else resolved


class Router:
    """Resolves models to routes (cached briefly, see `caching`) and tracks adapters
    loaded per Pod."""

    def __init__(self, kube: Kube, http: aiohttp.ClientSession, cache_seconds: float,
                 catalog: Catalog | None = None) -> None:
        self.kube = kube
        self.http = http
        self.catalog = catalog if catalog is not None else Catalog(kube, cache_seconds)
        self._routes: RefreshingCache[tuple[str, str], Route] = RefreshingCache(cache_seconds)
        self._loaded: dict[str, OrderedDict[str, None]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- resolution --------------------------------------------------------------------

    async def route(self, tenant: str, model: str) -> Route:
        return await self._routes.get((tenant, model), lambda: self._resolve(tenant, model))

    def forget(self, tenant: str, model: str) -> None:
        """Drops a cached route, e.g. after a Pod refused connections."""
        self._routes.forget((tenant, model))

    async def _resolve(self, tenant: str, model: str) -> Route:
        """A fine-tuned id goes to its job's base; any other name is looked for among what
        the tenant's deployments serve (under the model id first, for a catalog model) and
        then in the catalog, whose shared deployment serves it under its model id."""
        adapter = None
        base: str | None = None
        served = model
        if job_of_fine_tuned_model(model) is not None:
            job = await fine_tuned_job(self.kube, tenant, model)
            if job is None:
                raise OpenAIError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found")
            base = job["spec"]["baseModel"]
            adapter = Adapter(name=model, path=adapter_path(job["status"].get("adapterUri") or ""))
        elif (entry := await self.catalog.resolve(model)) is not None:
            base, served = entry["metadata"]["name"], model_id_of(entry)
        for deployment in await self.kube.list("modeldeployments", tenant):
            listed = (deployment.get("status") or {}).get("servedModels") or []
            for name in dict.fromkeys((served, model)):
                if name in listed:
                    return await self._route_for(deployment, _listed_adapter(deployment, name), name)
        if base is None:
            raise OpenAIError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found")
        shared = await self.kube.list("modeldeployments", settings().system_namespace,
                                      label_selector=f"{Label.BASE_MODEL}={base},{Label.SHARED}=true")
        if not shared:
            if adapter is None and await self._catalog_moved(model, base):
                return await self._resolve(tenant, model)
            raise OpenAIError(503, f"No deployment serves '{served}' yet.", param="model", code="model_not_ready",
                              type="server_error")
        return await self._route_for(shared[0], adapter, served)

    async def _catalog_moved(self, model: str, base: str) -> bool:
        """Whether the catalog as it is now has `model` name another entry than `base`, or
        none: the cached catalog named an entry since deleted or replaced under the same id.
        Asked only before answering that nothing serves a catalog model, so the hot path
        keeps the cache."""
        current = (await self.catalog.fresh()).resolve(model)
        return current is None or current["metadata"]["name"] != base

    async def _route_for(self, deployment: dict, adapter: Adapter | None, model: str) -> Route:
        meta, spec = deployment["metadata"], deployment["spec"]
        name = (deployment.get("status") or {}).get("deployment") or meta["name"]
        apps = await self.kube.get_deployment(meta["namespace"], name)
        selector = ((apps or {}).get("spec") or {}).get("selector", {}).get("matchLabels") or {}
        pods = []
        if selector:
            labels = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
            pods = _ready_pods(await self.kube.list_pods(meta["namespace"], labels))
        if not pods:
            raise OpenAIError(503, f"The deployment '{meta['name']}' has no ready replicas.", param="model",
                              code="model_not_ready", type="server_error")
        token = deployment_token(await platform_key(self.kube), meta["namespace"], meta["name"], meta["uid"])
        return Route(deployment=meta["name"], model=model, pods=pods, adapter=adapter,
                     max_adapters=spec.get("maxAdapters") or DEFAULT_MAX_ADAPTERS, token=token)

    # -- pod choice and adapters -------------------------------------------------------

    def choose(self, route: Route, exclude: set[str] = frozenset()) -> Pod | None:
        """Round robin over the ready Pods, restricted to those already holding the
        adapter when any does."""
        candidates = [pod for pod in route.pods if pod.uid not in exclude]
        if route.adapter is not None:
            holding = [pod for pod in candidates if route.adapter.name in self._loaded.get(pod.uid, ())]
            candidates = holding or candidates
        if not candidates:
            return None
        return candidates[next(route.counter) % len(candidates)]

    def holds(self, pod: Pod, adapter: Adapter) -> bool:
        return adapter.name in self._loaded.get(pod.uid, ())

    def forget_adapter(self, pod: Pod, adapter: Adapter) -> None:
        self._loaded.get(pod.uid, OrderedDict()).pop(adapter.name, None)

    async def ensure_adapter(self, pod: Pod, route: Route, request_id: str) -> None:
        """Loads the route's adapter on `pod` unless it is known to be there; concurrent
        first requests for one adapter on one Pod load it once."""
        adapter = route.adapter
        if adapter is None:
            return
        loaded = self._loaded.setdefault(pod.uid, OrderedDict())
        if adapter.name in loaded:
            loaded.move_to_end(adapter.name)
            return
        lock = self._locks.setdefault((pod.uid, adapter.name), asyncio.Lock())
        async with lock:
            if adapter.name in loaded:
                return
            async with self.http.post(
                f"{pod.load_url}/v1/load_lora_adapter",
                json={"lora_name": adapter.name, "lora_path": adapter.path},
                headers={"x-request-id": request_id, **bearer(route.token)},
            ) as response:
                status, text = response.status, await response.text(errors="replace")
            if status >= 400:
                raise OpenAIError(502, f"Loading adapter '{adapter.name}' on {pod.name} failed: {status} {text[:500]}",
                                  code="adapter_load_failed", type="server_error")
            loaded[adapter.name] = None
            while len(loaded) > route.max_adapters:
                loaded.popitem(last=False)
