"""Startup, readiness and liveness probes as a kubelet runs them, for httpGet probes.

`ProbeState` counts consecutive results against the probe's thresholds; `http_probe`
is the one network call. Probes go to the Pod's own IP (its loopback address), so a
server that bound anywhere else is, correctly, not ready.
"""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ProbeSpecError(ValueError):
    """A probe this node cannot run (exec, tcpSocket, grpc) or one naming no known port."""


@dataclass(frozen=True)
class HttpTarget:
    host: str
    port: int
    path: str
    scheme: str
    headers: tuple[tuple[str, str], ...]


def http_target(probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str) -> HttpTarget:
    get = probe.get("httpGet")
    if get is None:
        kinds = sorted(k for k in probe if k in ("exec", "tcpSocket", "grpc"))
        raise ProbeSpecError(f"{'/'.join(kinds) or 'this'} probe is not supported on the local node (httpGet only)")
    port = get.get("port")
    if isinstance(port, str) and not port.isdigit():
        named = [p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port]
        if not named:
            raise ProbeSpecError(f"probe port {port!r} names no container port")
        port = named[0]
    return HttpTarget(
        host=get.get("host") or pod_ip,
        port=int(port),
        path=get.get("path") or "/",
        scheme=(get.get("scheme") or "HTTP").upper(),
        headers=tuple((h["name"], h["value"]) for h in get.get("httpHeaders") or []),
    )


def http_probe(target: HttpTarget, timeout: float) -> tuple[bool, str]:
    """One probe: success on 200-399, as a kubelet counts it; the message explains a failure."""
    connection_type = http.client.HTTPSConnection if target.scheme == "HTTPS" else http.client.HTTPConnection
    connection = connection_type(target.host, target.port, timeout=timeout)
    try:
        connection.request("GET", target.path, headers=dict(target.headers))
        status = connection.getresponse().status
    except OSError as exc:
        return False, f"Get \"http://{target.host}:{target.port}{target.path}\": {exc}"
    finally:
        connection.close()
    if 200 <= status < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {status}"


@dataclass
class ProbeState:
    """Consecutive successes and failures of one probe of one container run."""

    spec: Mapping[str, Any]
    next_at: float
    successes: int = 0
    failures: int = 0

    @classmethod
    def starting(cls, spec: Mapping[str, Any], started: float) -> "ProbeState":
        return cls(spec=spec, next_at=started + float(spec.get("initialDelaySeconds", 0)))

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))

    def due(self, at: float) -> bool:
        return at >= self.next_at

    def record(self, ok: bool, at: float) -> str | None:
        """Counts one result; returns "success" or "failure" when a threshold is crossed."""
        self.next_at = at + self.period
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            return "success" if self.successes >= int(self.spec.get("successThreshold", 1)) else None
        self.failures, self.successes = self.failures + 1, 0
        return "failure" if self.failures >= int(self.spec.get("failureThreshold", 3)) else None
