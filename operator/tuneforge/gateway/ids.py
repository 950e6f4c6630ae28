"""Object ids, and idempotent creates.

New ids are time-ordered (12 hex digits of milliseconds, then 12 random ones), so objects
created within the same second still list in creation order. With an `Idempotency-Key`, the new object's id is derived from the
tenant and the key, so a retried create finds the object the first attempt made instead
of making a second one. Without the header every create gets a fresh random id.

The request body's hash is kept on the object; reusing a key with a different body is a
client error (422), never a silent return of the wrong object.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable

from tuneforge.api.v1alpha1.labels import Annotation
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.kube import AlreadyExists, Kube


def new_id(prefix: str) -> str:
    return f"{prefix}-{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def derived_id(prefix: str, tenant: str, key: str) -> str:
    return f"{prefix}-" + hashlib.sha256(f"{prefix}\0{tenant}\0{key}".encode()).hexdigest()[:24]


def body_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


async def create_once(
    kube: Kube,
    plural: str,
    tenant: str,
    *,
    prefix: str,
    idempotency_key: str | None,
    request_body: dict,
    build: Callable[[str], Awaitable[dict]],
) -> dict:
    """Creates the resource `build(name)` renders, at most once per Idempotency-Key.

    `build` runs only when nothing was created under the key yet, so its checks (files
    exist, the model is known) are not repeated on a replay; two racing first attempts
    meet at the API server, and the loser returns what the winner created.
    """
    name = derived_id(prefix, tenant, idempotency_key) if idempotency_key else new_id(prefix)
    digest = body_hash(request_body)
    if idempotency_key and (existing := await kube.get(plural, tenant, name)):
        return _same_request(existing, digest)
    resource = await build(name)
    resource["metadata"].setdefault("annotations", {})[Annotation.REQUEST_HASH] = digest
    try:
        return await kube.create(plural, tenant, resource)
    except AlreadyExists:
        return _same_request(await kube.get(plural, tenant, name), digest)


def _same_request(existing: dict, digest: str) -> dict:
    if (existing["metadata"].get("annotations") or {}).get(Annotation.REQUEST_HASH) != digest:
        raise OpenAIError(422, "This Idempotency-Key was already used with a different request.",
                          param="Idempotency-Key", code="idempotency_key_reused")
    return existing
