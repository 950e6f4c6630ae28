"""The node agent's kubelet endpoint: the HTTPS API the API server calls on a node.

`kubectl logs` asks the API server, which looks up the Pod's Node, dials the address and
port the Node reports (`status.addresses`, `status.daemonEndpoints.kubeletEndpoint`) and
proxies `GET /containerLogs/{namespace}/{pod}/{container}` to it. That is the kubelet call
the platform's users make (`kubectl logs`), so it is the one served here. TLS is a cluster's: the agent serves a certificate of the cluster
CA for its node's addresses, which the API server verifies, and accepts only clients
that CA signed for client use, which is the API server's kubelet client certificate
(`tuneforge.local.pki`). Like a kubelet whose authorization mode is AlwaysAllow, it then
answers every such client.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.local.containerlogs import LogUnavailable, log_options, stream_log
from tuneforge.local.pki import KubeletTls

log = logging.getLogger("tuneforge.local.node")
STOP_SECONDS = 5.0
"""How long open log streams get to end when the agent stops (its Pods have stopped by then,
which ends every followed log)."""


@dataclass(frozen=True)
class ContainerLog:
    """The file holding the run a log request reads, and whether that run still writes to it."""

    path: Path
    running: Callable[[], bool]


class LogSource(Protocol):
    def container_log(self, namespace: str, pod: str, container: str, previous: bool) -> ContainerLog:
        """The log of one run of a container of a Pod on this node; raises LogUnavailable."""


def _open(path: Path, pod: str, container: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise LogUnavailable(400, f'the log of container "{container}" in pod "{pod}" is no longer on '
                                  "the node") from None


def kubelet_app(source: LogSource) -> FastAPI:
    """The kubelet's routes over `source`; errors are plain text, with a kubelet's status codes."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/containerLogs/{namespace}/{pod}/{container}")
    async def container_logs(namespace: str, pod: str, container: str, request: Request) -> Response:
        query = {key: request.query_params.getlist(key) for key in request.query_params}
        try:
            options = log_options(query)
            target = await run_in_threadpool(source.container_log, namespace, pod, container, options.previous)
            handle = await run_in_threadpool(_open, target.path, pod, container)
        except LogUnavailable as exc:
            return PlainTextResponse(exc.message, status_code=exc.status)
        return StreamingResponse(stream_log(handle, options, target.running), media_type="text/plain")

    return app


class KubeletServer:
    """The kubelet app on its own uvicorn loop in a thread of the agent, listening on a free
    port of `host` (the Node advertises it), with the TLS of `tls`."""

    def __init__(self, app: FastAPI, tls: KubeletTls, host: str) -> None:
        config = uvicorn.Config(
            app, ssl_certfile=str(tls.serving.cert_file), ssl_keyfile=str(tls.serving.key_file),
            ssl_ca_certs=str(tls.client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED,
            lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=int(STOP_SECONDS),
        )
        config.load()  # a certificate that does not load fails here, in the caller, not in the thread
        self.socket = socket.create_server((host, 0))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="kubelet-api", daemon=True)

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def start(self) -> "KubeletServer":
        """Serves from now on: the socket listens already, so a connection made before the
        loop runs waits in the backlog instead of being refused."""
        self.thread.start()
        log.info("kubelet API on https://%s:%d", *self.socket.getsockname()[:2])
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_SECONDS + 5)
        self.socket.close()
