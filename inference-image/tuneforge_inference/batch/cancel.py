"""The user's cancel: a `cancel` marker object in the batch's directory, which the
controller writes because it cannot signal a Pod on another node directly, and deleting
the Pod would lose the grace period. Signals do not cancel (interrupt.py)."""

from __future__ import annotations

import asyncio

from tuneforge.contracts import BATCH_CANCEL_MARKER
from tuneforge.storage import ArtifactStore


class CancelRequest:
    """An event that is set once the cancel marker is seen."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.marker = store.path(BATCH_CANCEL_MARKER)
        self.event = asyncio.Event()

    async def poll_marker(self) -> None:
        """Checks the store once (off the event loop: on S3 it is a HEAD request)."""
        if not self.event.is_set() and await asyncio.to_thread(self.store.exists, self.marker):
            self.event.set()
