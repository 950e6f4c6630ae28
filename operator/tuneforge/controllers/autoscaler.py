"""The autoscaler: a ticker over the ModelDeployments with spec.autoscaling.

Every tick it reads the load (the engines' running and waiting requests from each ready
Pod's /metrics, which vLLM serves and the CPU engine mirrors, plus the requests gateways
hold, from the ModelDeployment's annotation), lets `scaling.Scaler` decide, and when the
count changes writes status.autoscaling first and then the Deployment's scale subresource:
the reconcile applies the Deployment with status.autoscaling.desiredReplicas, so an apply
racing a scale change keeps the new count. Nothing else is installed for it (no metrics
server, no Prometheus adapter, no KEDA); the history lives in the operator, and a restarted
operator removes no replica until it has watched a whole scale-down delay again.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any

import httpx
import kopf
from prometheus_client.parser import text_string_to_metric_families

from tuneforge.api.v1alpha1.autoscaling import Autoscaling, held_requests
from tuneforge.controllers import kube, metrics
from tuneforge.controllers.children import first
from tuneforge.controllers.scaling import Decision, Scaler
from tuneforge.controllers.settings import ControllerSettings
from tuneforge.controllers.ticker import Key, Ticking

KIND, PLURAL = "ModelDeployment", "modeldeployments"
SCRAPE_THREADS = 16
"""Engines scraped at once, across every autoscaled deployment."""
ENGINE_LOAD = ("vllm:num_requests_running", "vllm:num_requests_waiting")
STATUS_REFRESH_SECONDS = 30.0
"""The load in status is refreshed at most this often between decisions: it is for people
reading `kubectl get -o yaml`, and a write per tick would cost the API server more."""


def engine_load(exposition: str) -> float:
    """Requests running and waiting in an engine's Prometheus exposition, summed over its
    models (vLLM labels the gauges by model name)."""
    return sum(sample.value for family in text_string_to_metric_families(exposition) if family.name in ENGINE_LOAD
               for sample in family.samples)


def _scrape(http: httpx.Client, address: str) -> float:
    """One engine's load; an engine that does not answer counts as idle (it is not ready
    or about to be replaced, and the requests it held are in flight elsewhere)."""
    try:
        response = http.get(f"http://{address}/metrics")
        response.raise_for_status()
        return engine_load(response.text)
    except (httpx.HTTPError, ValueError):
        return 0.0


def _status_changes(status: dict[str, Any], decision: Decision, current: int, now: float,
                    last_written: float) -> dict[str, Any] | None:
    """The status.autoscaling fields to write, or None when nothing worth a write changed."""
    previous = status.get("autoscaling") or {}
    load = round(decision.load, 2)
    fields: dict[str, Any] = {"currentReplicas": current, "desiredReplicas": decision.desired, "load": load}
    if decision.desired != current:
        fields["lastScaleTime"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        fields["reason"] = decision.reason
        return fields
    counts_changed = (previous.get("currentReplicas"), previous.get("desiredReplicas")) != (current, decision.desired)
    load_stale = previous.get("load") != load and now - last_written >= STATUS_REFRESH_SECONDS
    return fields if counts_changed or load_stale else None


@dataclass
class _History:
    scaler: Scaler
    last_written: float = float("-inf")
    """When this deployment's status.autoscaling was last written (monotonic seconds)."""


class Autoscaler:
    """The ModelDeployment ticker's second reconcile, for those with spec.autoscaling: each
    one's history (kept here, beside the ticker, for as long as it autoscales) and the
    HTTP client and threads its scrapes share."""

    def __init__(self, interval: float) -> None:
        self._timeout = min(interval, 2.0)
        self._histories: dict[Key, _History] = {}
        self._http: httpx.Client | None = None
        self._scrapes: ThreadPoolExecutor | None = None

    def forget(self, key: Key) -> None:
        if self._histories.pop(key, None) is not None:
            metrics.forget_replicas(*key)

    def reconcile(self, raw: dict[str, Any], status: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """One decision: read the load, decide, write status then scale. It writes status
        itself, before the scale change (see the module's docstring), so the ticker finds
        nothing left to write."""
        name, namespace = raw["metadata"]["name"], raw["metadata"]["namespace"]
        summary = first(kwargs["tf_deployments"].get(("inference", namespace, name)))
        if summary is None:  # not applied yet: the reconcile creates it with the initial scale
            return status
        history = self._histories.setdefault((namespace, name), _History(Scaler(started=time.monotonic())))
        autoscaling = Autoscaling.model_validate(raw["spec"]["autoscaling"])
        current = summary["desired"]
        addresses = [pod["address"] for pod in kwargs["tf_pods"].get(("inference", namespace, name), ()) if pod["address"]]
        load = sum(self._scrape_all(addresses))
        held = held_requests(raw["metadata"].get("annotations"), time.time())
        now = time.monotonic()
        decision = history.scaler.observe(now, load, held, current, autoscaling)
        changes = _status_changes(status, decision, current, now, history.last_written)
        if changes:
            kube.patch_custom_status(namespace, KIND, name, {"autoscaling": changes})
            history.last_written = now
        if decision.desired != current:
            kube.scale_deployment(namespace, name, decision.desired)
            kopf.info(raw, reason="Scaled", message=f"{current} -> {decision.desired} replicas: {decision.reason}")
        metrics.REPLICAS.labels(namespace, name, "current").set(current)
        metrics.REPLICAS.labels(namespace, name, "desired").set(decision.desired)
        return status

    def _scrape_all(self, addresses: list[str]) -> list[float]:
        if self._http is None:
            self._http = httpx.Client(timeout=self._timeout)
            self._scrapes = ThreadPoolExecutor(SCRAPE_THREADS, thread_name_prefix="autoscale-scrape")
        return list(self._scrapes.map(partial(_scrape, self._http), addresses))


def register(registry: kopf.OperatorRegistry, controller_settings: ControllerSettings, ticking: Ticking) -> None:
    """The autoscaler runs on a ticker of its own, at --autoscale-interval, beside the
    ModelDeployment reconcile's."""
    interval = controller_settings.autoscale_interval
    autoscaler = Autoscaler(interval)
    ticking.install(registry, KIND, PLURAL, autoscaler.reconcile, interval=interval, name="autoscale",
                    when=lambda spec, **_: bool(spec.get("autoscaling")), forget=autoscaler.forget)
