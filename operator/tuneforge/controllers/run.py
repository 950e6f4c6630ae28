"""Wires the controllers into one kopf operator and runs it.

Every handler is registered into an explicit registry (not kopf's global one), each kind
given the controller settings read from the command line, so the tickers' intervals
follow `--poll-interval` and nothing reads a tunable from a module global.
Replicas coordinate through kopf peering: the replica with the highest priority handles
objects and the others stand by, taking over when it stops refreshing its peering record
(kopf pauses replicas of tied priority, so each replica needs its own). The tickers run
outside kopf's handlers and follow the same record (leadership.py), under the identity
this module hands kopf.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from tuneforge.api.v1alpha1.labels import FINALIZER, OPERATOR_NAME, Label
from tuneforge.config import settings
from tuneforge.controllers import (
    autoscaler,
    basemodel,
    batch,
    children,
    connections,
    deployment,
    finetuning,
    kopf_readiness,
    kube,
    metrics,
)
from tuneforge.controllers.essence import NoEssence
from tuneforge.controllers.leadership import Leadership, own_identity
from tuneforge.controllers.settings import ControllerSettings
from tuneforge.controllers.ticker import Ticking

MANAGED = {Label.MANAGED_BY: OPERATOR_NAME}


def _job_index(namespace: str, labels: dict, body: kopf.Body, **_: Any) -> dict | None:
    key = children.owner_key(namespace, labels)
    return {key: children.job_summary(body)} if key else None


def _pod_index(namespace: str, labels: dict, body: kopf.Body, **_: Any) -> dict | None:
    key = children.owner_key(namespace, labels)
    return {key: children.pod_summary(body)} if key else None


def _deployment_index(namespace: str, labels: dict, body: kopf.Body, **_: Any) -> dict | None:
    key = children.owner_key(namespace, labels)
    return {key: children.deployment_summary(body)} if key else None


def _workload_index(namespace: str, body: kopf.Body, **_: Any) -> dict | None:
    key = children.workload_key(namespace, body)
    return {key: children.workload_summary(body)} if key else None


def _ensure_platform_key(logger: logging.Logger, **_: Any) -> None:
    """Creates the platform key at start, so the gateway can hand out webhook signing
    secrets on a cluster with no deployment yet. Never blocks the start: every user of the
    key creates it on demand as well."""
    try:
        kube.platform_serving_key(settings().system_namespace)
    except ApiException as exc:
        logger.warning("could not create the platform key at start (created on first use): %s", exc.reason)


def build_registry(*, cluster_wide: bool, controller_settings: ControllerSettings,
                   ticking: Ticking) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    login = connections.login_handler(connections.connection_limit(cluster_wide))
    kopf.on.login(registry=registry, id="login")(login)
    kopf.on.startup(registry=registry, id="platform-key")(_ensure_platform_key)
    kopf.index("batch", "v1", "jobs", labels=MANAGED, registry=registry, id="tf_jobs")(_job_index)
    kopf.index("v1", "pods", labels=MANAGED, registry=registry, id="tf_pods")(_pod_index)
    kopf.index("apps", "v1", "deployments", labels=MANAGED, registry=registry, id="tf_deployments")(_deployment_index)
    # Kueue's Workloads, where it installs them (v1beta2, Kueue 0.15 and later): why a queued
    # trainer or batch runner is not running. kopf starts watching once the CRD appears.
    kopf.index("kueue.x-k8s.io", "v1beta2", "workloads", registry=registry, id="tf_workloads")(_workload_index)
    for module in (basemodel, finetuning, deployment, autoscaler, batch):
        module.register(registry, controller_settings, ticking)
    return registry


def controller_settings(args: argparse.Namespace) -> ControllerSettings:
    return ControllerSettings(
        poll_interval=args.poll_interval,
        autoscale_interval=args.autoscale_interval,
        status_interval=args.status_interval,
        dependency_grace=args.dependency_grace,
        pod_admission_timeout=args.pod_admission_timeout,
        batch_retries_per_hour=args.batch_retries_per_hour,
        webhook_attempts=args.webhook_attempts,
        webhook_retry_delay=args.webhook_retry_delay,
    )


def operator_settings(args: argparse.Namespace) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="tuneforge.io")
    settings.persistence.diffbase_storage = NoEssence()
    settings.execution.max_workers = args.workers
    settings.posting.level = logging.INFO
    settings.peering.name = args.peering
    settings.peering.priority = args.priority
    settings.peering.lifetime = args.peering_lifetime
    settings.peering.standalone = args.standalone
    settings.watching.server_timeout = 300
    return settings


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # kopf logs every handled event at INFO, which would bury the log. Transitions are
    # visible as Events and in status.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics.serve(args.metrics_port)
    kopf_readiness.install()
    identity = own_identity()
    leadership = Leadership(identity, priority=args.priority, peering=None if args.standalone else args.peering,
                            namespaces=tuple(args.namespace))
    kopf_settings = operator_settings(args)
    ticking = Ticking(leadership, kopf_settings, workers=args.workers)
    kopf.run(
        registry=build_registry(cluster_wide=not args.namespace, controller_settings=controller_settings(args),
                                ticking=ticking),
        settings=kopf_settings,
        identity=identity,
        standalone=args.standalone,
        priority=args.priority,
        peering_name=None if args.standalone else args.peering,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0
