"""kopf's change detection, turned off: tuneforge has no handler that needs it.

For every event of every watched kind (FineTuningJobs, and every Job and Pod the indexes
follow), kopf builds an object's "essence", a deep copy of its whole body, status
included, to diff against the last one it handled; it keeps that last essence in an
annotation, written after a new object of a kind with any create, update, resume or
delete handler is handled. The diff serves only those handlers and timers. tuneforge's
tickers follow spec changes by generation themselves (ticker.py), and its one such
handler, the BatchJob delete handler, is chosen by kopf from the deletion timestamp and
finalizer alone. So the copy was CPU for nothing (a tenth of the operator's at 1,000
jobs) and the annotation a write per BatchJob for nothing.

With `NoEssence` every object's essence is empty, old and new alike: kopf sees no
change, so a delete handler still runs, while a create, update or resume handler never
would, and tests/unit/controllers/test_essence.py fails if one is registered.
"""

from __future__ import annotations

from typing import Any

import kopf


class NoEssence(kopf.DiffBaseStorage):
    """A diff base that keeps nothing and reads nothing."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None
