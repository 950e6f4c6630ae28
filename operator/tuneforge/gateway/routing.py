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
bounded by the deployment's maxAdapters): the adapter it drops from that LRU it unloads
from the engine, so what the engine holds is what the gateway routes by. If an engine has
forgotten one anyway (restart, another gateway replica's unload), the chat path reloads it
and retries.

Which replica (`choose`): for a fine-tuned model, the least loaded replica already holding
its adapter, unless every holder has `saturation` requests in flight and another replica
has fewer: then the adapter spreads to the least loaded replica, so a hot adapter gets as
many replicas as its traffic needs. With no holder, the least loaded replica, which loads
it (among those with room for one more adapter, if any, so that no adapter is evicted
while another replica has room). A base-model request goes to the least loaded replica.
Load is the requests this gateway has in flight to each Pod; equal loads take turns. `round-robin` routing (a
setting, for comparison) ignores adapters and load.

A deployment with autoscaling and no ready replica holds the request (`held`) while it
scales up.

Every call to a serving Pod carries the deployment's serving token
(tuneforge.serving_auth), derived from the platform key the operator keeps in the system
namespace; the engines and the sidecar refuse calls without it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import aiohttp

from tuneforge.api.v1alpha1.basemodel import model_id_of
from tuneforge.api.v1alpha1.finetuningjob import job_of_fine_tuned_model
from tuneforge.api.v1alpha1.labels import Label, PortName
from tuneforge.config import settings
from tuneforge.gateway import metrics
from tuneforge.gateway.caching import RefreshingCache
from tuneforge.gateway.catalog import Catalog, fine_tuned_job
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.held import HeldRequests
from tuneforge.gateway.kube import Kube
from tuneforge.gateway.platform_key import platform_key
from tuneforge.gateway.settings import gateway_settings
from tuneforge.jobfiles import adapter_source_uri
from tuneforge.serving_auth import bearer, deployment_token
from tuneforge.storage import StoreError, resolve_uri

DEFAULT_MAX_ADAPTERS = 8
DEFAULT_PORT = 8000
ROUND_ROBIN = "round-robin"

log = logging.getLogger(__name__)


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

    namespace: str
    deployment: str
    """The ModelDeployment's name."""
    model: str
    """The name the engine serves the requested model under; a request naming it otherwise
    (a catalog model's alias) is sent with this name instead."""
    pods: list[Pod]
    adapter: Adapter | None
    max_adapters: int
    token: str
    """The deployment's serving token, sent on every call to its Pods."""
    saturation: int
    """Requests in flight on each replica holding an adapter beyond which the adapter is
    spread to another replica: the deployment's autoscaling target, else the gateway's."""
    autoscaled: bool = False
    """With no ready replica, requests wait for one (the autoscaler starts it)."""
    scale_up_timeout: float | None = None
    """How long they wait, when the deployment sets it."""
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
                 catalog: Catalog | None = None, *, held: HeldRequests | None = None,
                 saturation: int = 8, policy: str = "adapter-aware") -> None:
        self.kube = kube
        self.http = http
        self.catalog = catalog if catalog is not None else Catalog(kube, cache_seconds)
        if held is None:
            config = gateway_settings()
            held = HeldRequests(kube, limit=config.held_requests_per_deployment, timeout=config.scale_up_timeout_seconds)
        self.held = held
        self.saturation = saturation
        self.policy = policy
        self._routes: RefreshingCache[tuple[str, str], Route] = RefreshingCache(cache_seconds)
        self._loaded: dict[str, OrderedDict[str, None]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._in_flight: dict[str, int] = {}

    # -- resolution --------------------------------------------------------------------

    async def route(self, tenant: str, model: str) -> Route:
        return await self._routes.get((tenant, model), lambda: self._resolve(tenant, model))

    async def ready_route(self, tenant: str, model: str) -> Route:
        """The route with at least one ready Pod: an autoscaled deployment without one
        holds the request until it has one (or answers 503 with Retry-After)."""
        route = await self.route(tenant, model)
        if route.pods:
            return route  # else autoscaled: `_route_for` refuses other deployments without ready Pods

        async def ready() -> bool:
            return bool(await self._ready_pods_of(route.namespace, route.deployment))

        async with self.held.hold((route.namespace, route.deployment), ready, route.scale_up_timeout):
            self.forget(tenant, model)
            route = await self.route(tenant, model)
        if not route.pods:  # the one ready replica went again in between
            raise OpenAIError(503, f"The deployment '{route.deployment}' has no ready replicas.", param="model",
                              code="model_not_ready", type="server_error", headers={"Retry-After": "1"})
        return route

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

    async def _ready_pods_of(self, namespace: str, deployment: dict | str) -> list[Pod]:
        """The ready Pods of a ModelDeployment (given as the object or its name), read from
        the API server."""
        if isinstance(deployment, str):
            deployment = await self.kube.get("modeldeployments", namespace, deployment) or {"metadata": {"name": ""}}
        name = (deployment.get("status") or {}).get("deployment") or deployment["metadata"]["name"]
        apps = await self.kube.get_deployment(namespace, name) if name else None
        selector = ((apps or {}).get("spec") or {}).get("selector", {}).get("matchLabels") or {}
        if not selector:
            return []
        labels = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
        return _ready_pods(await self.kube.list_pods(namespace, labels))

    async def _route_for(self, deployment: dict, adapter: Adapter | None, model: str) -> Route:
        meta, spec = deployment["metadata"], deployment["spec"]
        autoscaling = spec.get("autoscaling")
        pods = await self._ready_pods_of(meta["namespace"], deployment)
        if not pods and not autoscaling:
            raise OpenAIError(503, f"The deployment '{meta['name']}' has no ready replicas.", param="model",
                              code="model_not_ready", type="server_error")
        token = deployment_token(await platform_key(self.kube), meta["namespace"], meta["name"], meta["uid"])
        saturation = (autoscaling or {}).get("targetInFlight") or self.saturation
        return Route(namespace=meta["namespace"], deployment=meta["name"], model=model, pods=pods, adapter=adapter,
                     max_adapters=spec.get("maxAdapters") or DEFAULT_MAX_ADAPTERS, token=token,
                     saturation=saturation, autoscaled=bool(autoscaling),
                     scale_up_timeout=(autoscaling or {}).get("scaleUpTimeoutSeconds"))

    # -- pod choice and adapters -------------------------------------------------------

    def choose(self, route: Route, exclude: set[str] = frozenset()) -> Pod | None:
        """The replica for the next request (see the module docstring), or None when every
        ready one was tried."""
        candidates = [pod for pod in route.pods if pod.uid not in exclude]
        if not candidates:
            return None
        turn = next(route.counter)
        if self.policy == ROUND_ROBIN:
            metrics.ROUTING_DECISIONS.labels("round_robin").inc()
            return candidates[turn % len(candidates)]
        # Rotating the candidates makes equal loads take turns instead of piling on the first.
        shift = turn % len(candidates)
        candidates = candidates[shift:] + candidates[:shift]
        least_loaded = min(candidates, key=self.load)
        if route.adapter is None:
            metrics.ROUTING_DECISIONS.labels("least_loaded").inc()
            return least_loaded
        holders = [pod for pod in candidates if self.holds(pod, route.adapter)]
        if not holders:
            with_room = [pod for pod in candidates if self._adapters_on(pod) < route.max_adapters]
            metrics.ROUTING_DECISIONS.labels("least_loaded").inc()
            return min(with_room, key=self.load) if with_room else least_loaded
        holder = min(holders, key=self.load)
        if self.load(holder) >= route.saturation and self.load(least_loaded) < self.load(holder):
            metrics.ROUTING_DECISIONS.labels("spread").inc()
            return least_loaded
        metrics.ROUTING_DECISIONS.labels("affinity").inc()
        return holder

    def load(self, pod: Pod) -> int:
        """Requests this gateway has in flight to `pod`."""
        return self._in_flight.get(pod.uid, 0)

    def started(self, pod: Pod, route: Route) -> None:
        self._in_flight[pod.uid] = self._in_flight.get(pod.uid, 0) + 1
        metrics.IN_FLIGHT.labels(route.model).inc()

    def finished(self, pod: Pod, route: Route) -> None:
        left = self._in_flight.get(pod.uid, 0) - 1
        if left > 0:
            self._in_flight[pod.uid] = left
        else:
            self._in_flight.pop(pod.uid, None)
        metrics.IN_FLIGHT.labels(route.model).dec()

    def holds(self, pod: Pod, adapter: Adapter) -> bool:
        """Whether the adapter is loaded on `pod`, or being loaded there: requests arriving
        during a load wait for it instead of loading the adapter on a second replica."""
        return adapter.name in self._loaded.get(pod.uid, ()) or (pod.uid, adapter.name) in self._loading

    def _adapters_on(self, pod: Pod) -> int:
        loading = sum(1 for uid, name in self._loading if uid == pod.uid and name not in self._loaded.get(uid, ()))
        return len(self._loaded.get(pod.uid, ())) + loading

    def forget_adapter(self, pod: Pod, adapter: Adapter) -> None:
        self._loaded.get(pod.uid, OrderedDict()).pop(adapter.name, None)

    async def ensure_adapter(self, pod: Pod, route: Route, request_id: str) -> None:
        """Loads the route's adapter on `pod` unless it is known to be there; concurrent
        first requests for one adapter on one Pod share one load. Beyond maxAdapters, the
        least recently used adapter is unloaded from the engine."""
        adapter = route.adapter
        if adapter is None:
            return
        loaded = self._loaded.setdefault(pod.uid, OrderedDict())
        if adapter.name in loaded:
            loaded.move_to_end(adapter.name)
            metrics.ADAPTER_EVENTS.labels("hit").inc()
            return
        metrics.ADAPTER_EVENTS.labels("miss").inc()
        key = (pod.uid, adapter.name)
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(pod, adapter, route, request_id))
            self._loading[key] = pending
            pending.add_done_callback(lambda task: self._load_done(key, task))
        # Shielded: a caller that goes away (client disconnect) leaves the load to the others.
        await asyncio.shield(pending)
        if adapter.name not in loaded:
            loaded[adapter.name] = None
            while len(loaded) > route.max_adapters:
                evicted, _ = loaded.popitem(last=False)
                await self._unload(pod, evicted, route, request_id)

    def _load_done(self, key: tuple[str, str], task: asyncio.Task) -> None:
        self._loading.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every caller may have gone

    async def _load(self, pod: Pod, adapter: Adapter, route: Route, request_id: str) -> None:
        async with self.http.post(
            f"{pod.load_url}/v1/load_lora_adapter",
            json={"lora_name": adapter.name, "lora_path": adapter.path},
            headers={"x-request-id": request_id, **bearer(route.token)},
        ) as response:
            status, text = response.status, await response.text(errors="replace")
        if status >= 400:
            raise OpenAIError(502, f"Loading adapter '{adapter.name}' on {pod.name} failed: {status} {text[:500]}",
                              code="adapter_load_failed", type="server_error")
        metrics.ADAPTER_EVENTS.labels("load").inc()

    async def _unload(self, pod: Pod, name: str, route: Route, request_id: str) -> None:
        """Unloads an adapter the LRU dropped. A failure costs only memory on the engine
        (which bounds what it keeps resident itself), never the request."""
        metrics.ADAPTER_EVENTS.labels("eviction").inc()
        try:
            async with self.http.post(
                f"{pod.url}/v1/unload_lora_adapter", json={"lora_name": name},
                headers={"x-request-id": request_id, **bearer(route.token)},
            ) as response:
                if response.status >= 400 and response.status != 404:
                    log.warning("unloading adapter %r from %s failed: %s", name, pod.name, response.status)
        except aiohttp.ClientError as exc:
            log.warning("unloading adapter %r from %s failed: %s", name, pod.name, exc)
