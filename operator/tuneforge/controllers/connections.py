"""kopf's connections to the API server, bounded.

kopf's own HTTP session has no connection limit, and everything it sends is async: adding
finalizers to and patching the status of 1,000 objects after a restart goes out at once,
each request on its own TLS connection, and asyncio gives every TLS connection its own
read buffer. Measured on 1,000 FineTuningJobs: 2,032 connections, whose buffers held
266 MB of the operator's 796 MB peak.

So the operator logs in the way kopf does (`kopf.login_via_client`, the kubernetes
client's in-cluster or kubeconfig credentials) and hands kopf a session whose pool is
bounded. Watch streams hold a connection each for as long as they run, so the bound is
only safe when their number is fixed: watching the whole cluster, kopf keeps one stream
per watched resource (about ten). With namespace lists or globs it keeps one per resource
and namespace, an unknown number, and the pool stays unbounded as kopf has it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import kopf

API_CONNECTIONS = 64
"""Connections to the API server when watching the whole cluster: the ~10 watch streams,
and the rest for patches and events (requests queue for a free one beyond that)."""


def connection_limit(cluster_wide: bool) -> int:
    """aiohttp's `limit` for kopf's session; 0 is unbounded."""
    return API_CONNECTIONS if cluster_wide else 0


def login_handler(limit: int) -> Callable[..., Coroutine[Any, Any, kopf.KubeContext | None]]:
    """A kopf login handler: kopf's own client login on a session with at most `limit`
    connections (0: kopf's unbounded session)."""

    async def login(**kwargs: Any) -> kopf.KubeContext | None:
        info = kopf.login_via_client(**kwargs)
        if info is None or not limit:
            return info
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
            headers=info.as_http_headers(),
            proxy=info.proxy_url,
            trust_env=info.trust_env,
        )
        return kopf.AiohttpSession(
            server=info.server,
            default_namespace=info.default_namespace,
            priority=info.priority,
            expiration=info.expiration,
            aiohttp_session=session,
        )

    return login
