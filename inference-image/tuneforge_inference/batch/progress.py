"""progress.json: the batch's report to the controller and the gateway.

The runner owns one BatchProgress and rewrites the whole object atomically (the store's
temp-and-rename, or one PUT), so a reader never sees half of it. The runner calls `write`
once per tick and at each status change, which bounds the write rate however fast
requests finish.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from tuneforge.contracts import BatchProgress
from tuneforge.storage import ArtifactStore


class ProgressReporter:
    def __init__(self, store: ArtifactStore, path: str, existing: dict[str, Any] | None) -> None:
        self.store = store
        self.path = path
        # A restarted runner keeps the timestamps its predecessor recorded.
        self.progress = BatchProgress.model_validate(existing) if existing else BatchProgress()

    def set_status(self, status: str) -> None:
        """Enters a status and stamps `<status>_at` the first time it is entered."""
        self.progress.status = status  # type: ignore[assignment]
        stamp = f"{status}_at"
        if stamp in BatchProgress.model_fields and getattr(self.progress, stamp) is None:
            setattr(self.progress, stamp, datetime.now(timezone.utc))

    async def write(self) -> None:
        self.progress.updated_at = datetime.now(timezone.utc)
        data = self.progress.model_dump(mode="json")
        # Off the event loop: on an object store this is a network PUT.
        await asyncio.to_thread(self.store.write_json, self.path, data)
