"""Cancellation requests: SIGTERM/SIGINT, or a `cancel` marker object in the batch's
directory (what the controller writes when a user cancels, since it cannot signal a Pod
on another node directly and deleting the Pod would lose the grace period)."""

from __future__ import annotations

import asyncio
import signal

from tuneforge.storage import ArtifactStore

MARKER = "cancel"
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CancelRequest:
    """An event that is set once anything asks the batch to stop."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.marker = store.path(MARKER)
        self.event = asyncio.Event()
        self.reason: str | None = None

    def trigger(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self.trigger, sig.name)

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)

    async def poll_marker(self) -> None:
        """Checks the store once (off the event loop: on S3 it is a HEAD request)."""
        if not self.event.is_set() and await asyncio.to_thread(self.store.exists, self.marker):
            self.trigger("cancel marker")
