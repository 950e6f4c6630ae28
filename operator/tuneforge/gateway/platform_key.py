"""The platform key, read by the gateway: serving tokens and webhook signing secrets derive
from it (tuneforge.serving_auth, tuneforge.webhook_signing). The operator creates it; the
gateway only reads it, so it needs no access to Secrets outside the system namespace."""

from __future__ import annotations

import base64

from tuneforge.config import settings
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.kube import Kube
from tuneforge.serving_auth import PLATFORM_KEY_FIELD, PLATFORM_KEY_SECRET


async def platform_key(kube: Kube) -> str:
    """Read on each use (callers cache what they derive from it), so a replaced key is
    picked up as quickly as any other change; 503 until the operator has created it."""
    secret = await kube.get_secret(settings().system_namespace, PLATFORM_KEY_SECRET)
    encoded = ((secret or {}).get("data") or {}).get(PLATFORM_KEY_FIELD)
    if not encoded:
        raise OpenAIError(503, "The platform key does not exist yet; the operator creates it when it starts.",
                          code="platform_key_missing", type="server_error")
    return base64.b64decode(encoded).decode()
