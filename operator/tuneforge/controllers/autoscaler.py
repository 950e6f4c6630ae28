"""The autoscaler: a kopf daemon per ModelDeployment with spec.autoscaling.

Every tick it reads the load (the engines' running and waiting requests from each ready
Pod's /metrics, which vLLM serves and the CPU engine mirrors, plus the requests gateways
hold, from the ModelDeployment's annotation), lets `scaling.Scaler` decide, and when the
count changes writes status.autoscaling first and then the Deployment's scale subresource:
the reconcile applies the Deployment with status.autoscaling.desiredReplicas, so an apply
racing a scale change keeps the new count. Nothing else is installed for it (no metrics
server, no Prometheus adapter, no KEDA); the history lives in the daemon, and a restarted
operator removes no replica until it has watched a whole scale-down delay again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any

import httpx
import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.api.v1alpha1.autoscaling import Autoscaling, held_requests
from tuneforge.controllers import kube, metrics
from tuneforge.controllers.children import first
from tuneforge.controllers.scaling import Decision, Scaler
from tuneforge.controllers.settings import ControllerSettings
from tuneforge.controllers.ticker import plain

KIND = "ModelDeployment"
ENGINE_LOAD = ("vllm:num_requests_running", "vllm:num_requests_waiting")
STATUS_REFRESH_SECONDS = 30.0
"""The load in status is refreshed at most this often between decisions: it is for people
reading `kubectl get -o yaml`, and a write per tick would cost the API server more."""


def engine_load(exposition: str) -> float:
    """Requests running and waiting in an engine's Prometheus exposition, summed over its
    models (vLLM labels the gauges by model name)."""
    return sum(sample.value for family in text_string_to_metric_families(exposition) if family.name in ENGINE_LOAD
               for sample in family.samples)


async def _scrape(http: httpx.AsyncClient, address: str) -> float:
    """One engine's load; an engine that does not answer counts as idle (it is not ready
    or about to be replaced, and the requests it held are in flight elsewhere)."""
    try:
        response = await http.get(f"http://{address}/metrics")
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


async def _tick(scaler: Scaler, http: httpx.AsyncClient, raw: dict, indexes: dict[str, Any],
                last_written: float) -> float:
    """One decision: read the load, decide, write status then scale. Returns when status
    was last written."""
    name, namespace = raw["metadata"]["name"], raw["metadata"]["namespace"]
    summary = first(indexes["tf_deployments"].get(("inference", namespace, name)))
    if summary is None:  # not applied yet: the reconcile creates it with the initial scale
        return last_written
    autoscaling = Autoscaling.model_validate(raw["spec"]["autoscaling"])
    current = summary["desired"]
    addresses = [pod["address"] for pod in indexes["tf_pods"].get(("inference", namespace, name), ()) if pod["address"]]
    load = sum(await asyncio.gather(*(_scrape(http, address) for address in addresses)))
    held = held_requests(raw["metadata"].get("annotations"), time.time())
    now = time.monotonic()
    decision = scaler.observe(now, load, held, current, autoscaling)
    changes = _status_changes(raw.get("status") or {}, decision, current, now, last_written)
    if changes:
        await asyncio.to_thread(kube.patch_custom_status, namespace, KIND, name, {"autoscaling": changes})
        last_written = now
    if decision.desired != current:
        await asyncio.to_thread(kube.scale_deployment, namespace, name, decision.desired)
        kopf.info(raw, reason="Scaled", message=f"{current} -> {decision.desired} replicas: {decision.reason}")
    metrics.REPLICAS.labels(namespace, name, "current").set(current)
    metrics.REPLICAS.labels(namespace, name, "desired").set(decision.desired)
    return last_written


def register(registry: kopf.OperatorRegistry, controller_settings: ControllerSettings) -> None:
    interval = controller_settings.autoscale_interval

    async def autoscale(body: kopf.Body, name: str, namespace: str, stopped: kopf.DaemonStopped,
                        logger: logging.Logger, **kwargs: Any) -> None:
        scaler = Scaler(started=time.monotonic())
        last_written = float("-inf")
        async with httpx.AsyncClient(timeout=min(interval, 2.0)) as http:
            while not stopped:
                try:
                    last_written = await _tick(scaler, http, plain(body), kwargs, last_written)
                except ApiException as exc:
                    # The next tick decides again from fresh figures; kopf's daemon retry
                    # would pause the autoscaler for a minute.
                    logger.warning("autoscaling %s/%s: the API server answered %s %s", namespace, name,
                                   exc.status, exc.reason)
                await stopped.wait(interval)
        metrics.forget_replicas(namespace, name)

    kopf.daemon(GROUP, VERSION, "modeldeployments", registry=registry, id="autoscale",
                when=lambda spec, **_: bool(spec.get("autoscaling")), cancellation_timeout=10)(autoscale)
