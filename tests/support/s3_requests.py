"""What an S3 filesystem sends over the wire, counted through botocore's event hooks on
its client: every request (each retry included) by operation, and the body bytes each
way. Tests and benchmarks use it to show what a store operation costs against the real
loopback server, without a proxy in between."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec


@dataclass(frozen=True)
class Usage:
    """Requests and body bytes; subtract two to get what happened in between."""

    requests: int
    sent: int
    received: int
    operations: tuple[str, ...]

    def __sub__(self, earlier: Usage) -> Usage:
        return Usage(self.requests - earlier.requests, self.sent - earlier.sent, self.received - earlier.received,
                     self.operations[len(earlier.operations):])


class RequestLog:
    """Counts requests as the client sends them. Handlers run on fsspec's I/O thread."""

    def __init__(self) -> None:
        self._operations: list[str] = []
        self._sent = 0
        self._received = 0
        self._in_flight = 0
        self.peak_in_flight = 0
        """The most requests sent and not yet answered at once: how parallel the client was."""
        self._lock = threading.Lock()

    def usage(self) -> Usage:
        with self._lock:
            return Usage(len(self._operations), self._sent, self._received, tuple(self._operations))

    def on_send(self, event_name: str, request, **_) -> None:
        with self._lock:
            self._operations.append(event_name.rsplit(".", 1)[-1])
            self._sent += int(request.headers.get("Content-Length") or 0)
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def on_response(self, event_name: str, response_dict: dict | None = None, **_) -> None:
        """A HEAD answer's Content-Length is the object's size, not bytes transferred."""
        with self._lock:
            self._in_flight -= 1
            if response_dict is None or event_name.endswith(".HeadObject"):
                return
            self._received += int(response_dict["headers"].get("content-length") or 0)


@contextmanager
def recording(fs: fsspec.AbstractFileSystem) -> Iterator[RequestLog]:
    """Counts what `fs` (an s3fs filesystem) sends while the block runs."""
    fs.connect()
    events = fs.s3.meta.events
    log = RequestLog()
    events.register("before-send.s3", log.on_send)
    events.register("response-received.s3", log.on_response)
    try:
        yield log
    finally:
        events.unregister("before-send.s3", log.on_send)
        events.unregister("response-received.s3", log.on_response)
