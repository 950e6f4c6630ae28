"""Autoscaling of a serving deployment: the spec users write and the status the operator keeps.

Load is counted in requests in flight: those the engines report as running or waiting
(`vllm:num_requests_running` + `vllm:num_requests_waiting`, which the CPU engine mirrors)
plus those a gateway holds while the deployment has no ready replica. Batches send their
requests through the gateway, so a running batch is load like any other client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

from pydantic import ConfigDict, Field, model_validator

from tuneforge.api.v1alpha1.common import ApiModel
from tuneforge.api.v1alpha1.labels import Annotation

HELD_REFRESH_SECONDS = 5.0
"""How often a gateway holding requests renews its count on the ModelDeployment."""
HELD_FRESH_SECONDS = 3 * HELD_REFRESH_SECONDS
"""A count older than this describes requests that were served, refused or abandoned since."""

MIN_NOT_ABOVE_MAX = "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas"
"""Evaluated on the object as written, before the API server fills in the defaults."""


class Autoscaling(ApiModel):
    """Replicas that follow load, down to zero and back (the replicas field is then ignored)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": MIN_NOT_ABOVE_MAX, "message": "minReplicas must not exceed maxReplicas", "fieldPath": ".minReplicas"}]})

    min_replicas: int = Field(default=1, ge=0, le=64)
    """Fewest replicas. 0 releases every GPU after scaleDownDelaySeconds without requests;
    the next request is held by the gateway while a replica starts."""
    max_replicas: int = Field(ge=1, le=64)
    """Most replicas."""
    target_in_flight: int = Field(default=4, ge=1, le=4096)
    """Requests in flight per replica the scaler aims for: replicas = ceil(load / target)."""
    window_seconds: int = Field(default=30, ge=1, le=600)
    """Load is averaged over this window, so a burst shorter than it does not add replicas
    at once."""
    scale_down_delay_seconds: int = Field(default=300, ge=0, le=86400)
    """Replicas are removed only when fewer would have sufficed for this long (the highest
    recommendation within the delay wins), so a dip in traffic does not stop Pods that the
    next minute needs again."""

    scale_up_timeout_seconds: int | None = Field(default=None, ge=1, le=3600)
    """How long a request waits at the gateway for a replica when none is ready before it
    gets 503 with Retry-After; defaults to the gateway's (TUNEFORGE_GATEWAY_SCALE_UP_TIMEOUT_SECONDS,
    600 s). Allow for scheduling and the model's weight load."""

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class AutoscalingStatus(ApiModel):
    """What the autoscaler last saw and decided."""

    current_replicas: int | None = None
    """Replicas the Deployment has."""
    desired_replicas: int | None = None
    """Replicas the autoscaler asks for."""
    load: float | None = None
    """Requests in flight, averaged over the window."""
    last_scale_time: datetime | None = None
    """When the autoscaler last changed the replica count."""
    reason: str | None = None
    """Why it last changed the replica count, e.g. 'load 9.5 over target 4 per replica'."""


def held_requests_annotation(count: int, at: float) -> dict[str, str]:
    """The annotation by which a gateway tells the autoscaler that `count` requests wait
    for a replica (the push that lets a deployment at zero replicas, which no engine
    speaks for, scale up); `at` is a Unix time."""
    return {Annotation.HELD_REQUESTS: json.dumps({"count": count, "at": round(at, 3)})}


def held_requests(annotations: Mapping[str, str] | None, now: float) -> int:
    """Requests held for the deployment by its annotation, 0 once the count is stale or
    unreadable (a gateway that stopped renewing it holds nothing any more)."""
    try:
        held = json.loads((annotations or {})[Annotation.HELD_REQUESTS])
        count, at = int(held["count"]), float(held["at"])
    except (KeyError, ValueError, TypeError):
        return 0
    return max(count, 0) if now - at <= HELD_FRESH_SECONDS else 0
