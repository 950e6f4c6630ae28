"""A fault-injecting HTTP reverse proxy in front of the loopback S3 server.

Object stores fail transiently in production: 503 SlowDown when a prefix is throttled,
500/502/504 from a busy gateway, connections reset by a load balancer. Mocking the client
would test our assumptions about s3fs and botocore, not their behaviour, so the proxy
speaks real HTTP on 127.0.0.1 and the client under test retries over real sockets.

It decides per request, deterministically from a seed and the arrival order, whether to

- answer with an S3 error in S3's XML format, by default `503 SlowDown` (what S3 sends
  when throttling),
- drop the connection without an answer (a reset, as from an idle-timeout on a balancer),
- or forward the request to the upstream server, byte for byte.

Forwarded requests and answers are relayed as streams with their framing intact (fixed
Content-Length or chunked), so range reads, multipart uploads, ETags and checksums pass
through unchanged. Counters say how many requests arrived and how many were failed, so a
test can prove faults were injected rather than merely configured.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

RELAY_CHUNK = 64 * 1024
# Hop-by-hop: the proxy itself answers `Expect: 100-continue` to the client.
NOT_FORWARDED = {"expect"}
ERROR = "error"
DROP = "drop"
PASS = "pass"


@dataclass
class FaultPlan:
    """Which requests fail, and how. `error_rate` and `drop_rate` are shares of requests
    drawn from a random stream seeded by `seed`; `every`, when set, also answers every
    k-th request with the error, for tests that want an exact pattern. The error is
    `status` with S3 error `code` and `message`."""

    error_rate: float = 0.0
    drop_rate: float = 0.0
    every: int = 0
    seed: int = 0
    status: int = 503
    code: str = "SlowDown"
    message: str = "Please reduce your request rate."


class FaultyProxy:
    """The proxy; use `running(upstream, plan)` to start and stop it."""

    def __init__(self, upstream: str, plan: FaultPlan) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self._lock = threading.Lock()
        self.set_plan(plan)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set_plan(self, plan: FaultPlan) -> None:
        """Switches the fault plan and restarts the counters (e.g. faults off for setup)."""
        with self._lock:
            self.plan = plan
            self._rng = random.Random(plan.seed)
            self.counts: Counter[str] = Counter()
            self.faulted: Counter[str] = Counter()  # injected faults per HTTP method

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    @property
    def faults(self) -> int:
        return self.counts[ERROR] + self.counts[DROP]

    def decide(self, method: str) -> str:
        """The fate of the next request: ERROR, DROP or PASS."""
        with self._lock:
            number = self.requests + 1
            draw = self._rng.random()
            if self.plan.every and number % self.plan.every == 0:
                outcome = ERROR
            elif draw < self.plan.error_rate:
                outcome = ERROR
            elif draw < self.plan.error_rate + self.plan.drop_rate:
                outcome = DROP
            else:
                outcome = PASS
            self.counts[outcome] += 1
            if outcome != PASS:
                self.faulted[method] += 1
            return outcome

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@contextmanager
def running(upstream: str, plan: FaultPlan | None = None) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(upstream, plan or FaultPlan())
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def error_body(plan: FaultPlan) -> bytes:
    """An S3 error document (docs: Amazon S3 error responses)."""
    request_id = uuid.uuid4().hex[:16].upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{plan.code}</Code><Message>{plan.message}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>faulty-proxy</HostId></Error>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    timeout = 60

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        """Silent: one line per request would bury test output."""

    def _handle(self) -> None:
        proxy: FaultyProxy = self.server.proxy  # type: ignore[attr-defined]
        outcome = proxy.decide(self.command)
        if outcome == PASS:
            self._forward(proxy)
            return
        self._relay_request_body(lambda data: None)
        if outcome == ERROR:
            self._answer_error(proxy.plan)
        else:
            self._reset()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    # -- faults ---------------------------------------------------------------------------

    def _answer_error(self, plan: FaultPlan) -> None:
        """The error as S3 sends it; a HEAD answer has no body, so the client sees only
        the status (botocore then names the error by its number, e.g. "503")."""
        body = b"" if self.command == "HEAD" else error_body(plan)
        self.send_response_only(plan.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "faulty-proxy")
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Closes with RST (SO_LINGER 0), so the client sees a reset, not a clean close."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    # -- forwarding -----------------------------------------------------------------------

    def _forward(self, proxy: FaultyProxy) -> None:
        """One request upstream on a fresh connection (so a stale keep-alive connection
        upstream can never be mistaken for an injected fault), answer relayed back."""
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=self.timeout)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in NOT_FORWARDED:
                    upstream.putheader(name, value)
            upstream.endheaders()
            self._relay_request_body(upstream.send)
            response = upstream.getresponse()
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                self.send_header(name, value)
            self.end_headers()
            self._relay_response_body(response)
        finally:
            upstream.close()

    def _relay_request_body(self, sink: Callable[[bytes], object]) -> None:
        """Passes the request body to `sink` with its framing as received."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._relay_chunked(sink)
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining:
            data = self.rfile.read(min(RELAY_CHUNK, remaining))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            sink(data)
            remaining -= len(data)

    def _relay_chunked(self, sink: Callable[[bytes], object]) -> None:
        while True:
            size_line = self.rfile.readline()
            sink(size_line)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            sink(self.rfile.read(size + 2))  # the chunk and its CRLF
        while True:  # trailers (aws-chunked checksums may travel here), then a blank line
            line = self.rfile.readline()
            sink(line)
            if line in (b"\r\n", b"\n", b""):
                return

    def _relay_response_body(self, response: http.client.HTTPResponse) -> None:
        if self.command == "HEAD" or response.status in (204, 304):
            return
        if response.chunked:
            while data := response.read(RELAY_CHUNK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
            return
        while data := response.read(RELAY_CHUNK):
            self.wfile.write(data)
        if response.length is None and response.getheader("Content-Length") is None:
            self.close_connection = True  # the body ended with the upstream connection
