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


def new_id(prefix: str) -> str:
    return f"{prefix}-{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def derived_id(prefix: str, tenant: str, key: str) -> str:
    return f"{prefix}-" + hashlib.sha256(f"{prefix}\0{tenant}\0{key}".encode()).hexdigest()[:24]


def body_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]
