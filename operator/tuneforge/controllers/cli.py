"""`tuneforge operator` options. Kept apart from `run` so that building the CLI parser
does not import kopf for the other commands."""

from __future__ import annotations

import argparse

from tuneforge.controllers.settings import ControllerSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--peering", default="tuneforge",
        help="kopf peering object shared by the replicas; only the highest-priority live replica "
        "handles objects, the others wait (default: %(default)s)",
    )
    group.add_argument("--standalone", action="store_true", help="no peering: the only replica")
    parser.add_argument("--priority", type=int, default=0, help="peering priority of this replica")
    parser.add_argument(
        "--peering-lifetime", type=int, default=60,
        help="seconds a replica's peering record stays valid without a keep-alive: how long a standby "
        "waits before taking over from a replica that died (default: %(default)s, kopf's)",
    )
    parser.add_argument(
        "--namespace", action="append", default=[],
        help="namespace or glob to watch (repeatable); default: the whole cluster",
    )
    parser.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port; 0 disables")
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint URL; empty disables"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=ControllerSettings.poll_interval,
        help="seconds between reconciles of an object",
    )
    parser.add_argument(
        "--autoscale-interval", type=float, default=ControllerSettings.autoscale_interval,
        help="seconds between autoscaling decisions of a ModelDeployment with spec.autoscaling "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--status-interval", type=float, default=ControllerSettings.status_interval,
        help="minimum seconds between progress-only status writes",
    )
    parser.add_argument(
        "--dependency-grace", type=float, default=ControllerSettings.dependency_grace,
        help="seconds a new job waits for its model to appear before failing with model_not_found "
        "(objects applied together arrive in any order)",
    )
    parser.add_argument(
        "--pod-admission-timeout", type=float, default=ControllerSettings.pod_admission_timeout,
        help="seconds a trainer or batch runner Job may fail to create its Pods (refused by Pod Security, "
        "a quota or a webhook) before the job fails with pod_creation_refused (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-retries-per-hour", type=_at_least_one, default=ControllerSettings.batch_retries_per_hour,
        help="batch runner crashes retried per hour of the batch's completion window; the runner resumes "
        "from its journal each time, and a batch out of retries ends with what it finished (default: %(default)s)",
    )
    parser.add_argument(
        "--webhook-attempts", type=_at_least_one, default=ControllerSettings.webhook_attempts,
        help="deliveries of a job's webhook tried before it counts as failed (default: %(default)s)",
    )
    parser.add_argument(
        "--webhook-retry-delay", type=float, default=ControllerSettings.webhook_retry_delay,
        help="seconds before a webhook's second delivery; each later wait doubles, up to ten minutes "
        "(default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=32, help="threads running reconciles")


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(args: argparse.Namespace) -> int:
    from tuneforge.controllers.run import run

    return run(args)
