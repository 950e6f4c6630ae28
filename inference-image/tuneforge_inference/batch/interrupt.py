"""SIGTERM and SIGINT: the Pod is going away (a node drain, an eviction, a preemption).

That says nothing about the batch, so it must not end it: the runner stops dispatching,
gives in-flight requests the cancel grace period, makes its journal durable and exits with
TrainerExit.preempted (143, the platform's one code for "stopped on request, resume
me"), and the Job's next Pod resumes from the journal. Only the user's cancel
marker (cancel.py) cancels a batch.
"""

from __future__ import annotations

import asyncio
import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interruption:
    """An event that is set once the process is asked to stop."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self.event.set)

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
