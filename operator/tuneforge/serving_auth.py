"""Who may talk to a serving Pod: whoever holds its deployment's serving token.

A serving engine answers chat completions and, more dangerously, runtime LoRA loads; vLLM
leaves both open to any Pod that can reach it unless it runs with an API key. Each
ModelDeployment therefore gets its own token: the engine takes it as its API key (vLLM's
`VLLM_API_KEY`, the CPU engine the same way), the adapter-loader sidecar requires it for
loads, and the gateway sends it on every call it makes to the deployment's Pods.

The operator and the gateway both derive a deployment's token from one platform key (a
Secret in the system namespace that the operator creates once): the gateway then needs
no read access to Secrets in tenant namespaces, a token read out of one serving Pod opens
no other deployment, and a deployment deleted and created again under the same name
gets a new token (its uid is part of the derivation).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from tuneforge.config import settings

PLATFORM_KEY_SECRET = "tuneforge-serving-key"
"""The Secret in the system namespace holding the platform key under PLATFORM_KEY_FIELD."""
PLATFORM_KEY_FIELD = "key"
TOKEN_ENV = "TUNEFORGE_SERVING_TOKEN"
"""The variable through which a serving Pod's containers receive their deployment's token."""
TOKEN_SECRET_FIELD = "token"


def new_platform_key() -> str:
    return secrets.token_urlsafe(32)


def deployment_token(platform_key: str, namespace: str, name: str, uid: str) -> str:
    """The serving token of the ModelDeployment `namespace/name` with `uid`."""
    message = f"{namespace}/{name}/{uid}".encode()
    return hmac.new(platform_key.encode(), message, hashlib.sha256).hexdigest()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def is_authorized(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` (compared in constant time)."""
    scheme, _, presented = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def pod_token() -> str | None:
    """The token of the deployment this serving Pod belongs to; None outside a Pod (an
    engine started by hand), which then guards nothing."""
    token = settings().serving_token
    return token.get_secret_value() if token else None
