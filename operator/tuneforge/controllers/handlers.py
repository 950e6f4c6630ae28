"""The one shape of every kind's reconcile handler.

Each kind supplies a function from the object and its observed status to the status it
should have; this module turns it into the kopf handler, so that every kind is timed and
counted the same way, writes only the status fields that changed (nothing at all when
none did) and keeps the phase gauge current.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.controllers import metrics
from tuneforge.controllers.status import diff

Reconcile = Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], dict[str, Any]]
"""(object, observed status, kopf's keyword arguments: indexes, logger) -> desired status."""


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """An object (or part of one) as plain JSON data: kopf's live views change under a
    running handler, and a reconcile or an index keeps one consistent copy."""
    return json.loads(json.dumps(dict(body), default=dict))


def reconcile_on_timer(
    registry: kopf.OperatorRegistry, plural: str, kind: str, reconcile: Reconcile, *,
    interval: float, when: Callable[..., bool] | None = None,
) -> None:
    """Installs `reconcile` as the kind's kopf timer: a timer (not a change handler) so a
    tick also follows children and the store, which change without touching the object;
    its first tick fires as soon as the object is seen."""
    kopf.timer(GROUP, VERSION, plural, registry=registry, id="reconcile", interval=interval, when=when)(
        status_handler(kind, reconcile)
    )


def status_handler(kind: str, reconcile: Reconcile) -> Callable[..., None]:
    """The kopf handler that runs `reconcile` and patches the status fields it changed."""

    def handler(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        raw = plain(body)
        status = raw.get("status") or {}
        with metrics.reconcile(kind):
            desired = reconcile(raw, status, kwargs)
        changed = diff(status, desired)
        if changed:
            patch.status.update(changed)
        metrics.PHASES.observe(kind, raw["metadata"]["uid"], desired.get("phase"))

    return handler
