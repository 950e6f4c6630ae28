"""One generation thread behind a bounded queue.

CPU inference is compute-bound: two forward passes at once only slow each other down, so
all model work runs on ONE thread, off the event loop (which keeps answering /health,
/metrics and new requests). Requests beyond the one running wait in order, at most
`max_queue` of them; the next one is refused with 429 and a Retry-After header, which
the `openai` client honours before retrying.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import TypeVar

from tuneforge_inference.cpu.errors import APIError

T = TypeVar("T")
RETRY_AFTER_S = 1


class Worker:
    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneforge-generate")
        self._admitted = 0
        self.running = 0

    @property
    def waiting(self) -> int:
        return self._admitted - self.running

    def admit(self) -> None:
        """Takes a queue slot for a request (event loop only); 429 when none is free."""
        if self._admitted >= self.max_queue + 1:
            raise APIError(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"The server is busy: {self.max_queue} requests are already waiting. Retry later.",
                err_type="RateLimitError",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._admitted += 1

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Runs an admitted request's work; its slot is freed when the work ends, even if
        the client has gone away by then."""

        def tracked() -> T:
            self.running = 1
            try:
                return fn()
            finally:
                self.running = 0

        future = asyncio.get_running_loop().run_in_executor(self._executor, tracked)
        future.add_done_callback(lambda _: self._release())
        return future

    def _release(self) -> None:
        self._admitted -= 1

    async def call(self, fn: Callable[[], T]) -> T:
        """Runs model maintenance (adapter load/unload) on the generation thread, in line
        with generation but outside the request queue bound."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
