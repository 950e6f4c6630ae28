"""API keys: what a key is, how it is stored, and what it grants.

A key is bound to one namespace (the tenant) and a set of scopes. Only the SHA-256 of the
key is stored, in a Secret in the platform's system namespace named after a prefix of that
hash, so the gateway finds a key's Secret with one GET and a leaked Secret list reveals no
usable key. The gateway, the `tuneforge keys` CLI and the batch controller (which creates
a chat-scoped key per batch runner) all build and read the Secrets through this module,
so they agree on the format. Pure: no Kubernetes client here, only dicts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from tuneforge.api.v1alpha1.labels import Label
from tuneforge.config import settings

SCOPES: tuple[str, ...] = (
    "fine-tuning:read",
    "fine-tuning:write",
    "files:read",
    "files:write",
    "batches:read",
    "batches:write",
    "models:read",
    "chat",
)
"""Every scope a key can hold; `<area>:*` on input stands for all scopes of the area and
`*` for all of them."""

KEY_PREFIX = "tf-"
SECRET_PREFIX = "tuneforge-apikey-"
_HASH_CHARS_IN_NAME = 20


class ApiKeyError(ValueError):
    """A scope list or Secret that is not a valid API key description."""


@dataclass(frozen=True)
class ApiKey:
    """What a key grants: the namespace it acts in and its scopes."""

    tenant: str
    scopes: frozenset[str]
    description: str
    name: str
    """Name of the Secret holding the key's hash."""


def generate_key() -> str:
    """A new random key: `tf-` and 40 URL-safe characters (240 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(30)


def key_hash(key: str) -> str:
    """The hex SHA-256 of a key; keys are random, so no salt or slow hash is needed."""
    return hashlib.sha256(key.encode()).hexdigest()


def secret_name(key: str) -> str:
    """The name of the Secret storing `key`'s hash."""
    return SECRET_PREFIX + key_hash(key)[:_HASH_CHARS_IN_NAME]


def expand_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Scopes with `area:*` and `*` wildcards expanded; unknown scopes are refused so a
    typo never silently grants less than intended."""
    expanded: set[str] = set()
    for raw in scopes:
        scope = raw.strip()
        if not scope:
            continue
        if scope == "*":
            expanded.update(SCOPES)
        elif scope.endswith(":*"):
            area = scope[:-1]
            matching = [known for known in SCOPES if known.startswith(area)]
            if not matching:
                raise ApiKeyError(f"unknown scope {scope!r}; known scopes: {', '.join(SCOPES)}")
            expanded.update(matching)
        elif scope in SCOPES:
            expanded.add(scope)
        else:
            raise ApiKeyError(f"unknown scope {scope!r}; known scopes: {', '.join(SCOPES)}")
    if not expanded:
        raise ApiKeyError("a key needs at least one scope")
    return frozenset(expanded)


def has_scope(granted: Iterable[str], required: str) -> bool:
    """Whether scopes `granted` (wildcards allowed) include `required`."""
    granted = set(granted)
    if required in granted or "*" in granted:
        return True
    area, sep, _ = required.partition(":")
    return bool(sep) and f"{area}:*" in granted


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def key_secret(
    key: str,
    *,
    tenant: str,
    scopes: Iterable[str],
    description: str = "",
    labels: dict[str, str] | None = None,
    owner: dict | None = None,
) -> dict:
    """The v1 Secret body that registers `key` for `tenant` with `scopes`.

    `owner` (apiVersion, kind, name, uid of an object in the system namespace) becomes an
    ownerReference, so a key created for a batch runner is garbage-collected with it.
    """
    metadata: dict = {
        "name": secret_name(key),
        "namespace": settings().system_namespace,
        "labels": {**(labels or {}), Label.API_KEY: "true", Label.TENANT: tenant},
    }
    if owner is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["name"],
                "uid": owner["uid"],
                "blockOwnerDeletion": False,
            }
        ]
    data = {
        "keyHash": key_hash(key),
        "tenant": tenant,
        "scopes": ",".join(sorted(expand_scopes(scopes))),
        "description": description,
        "createdAt": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "tuneforge.io/api-key",
        "metadata": metadata,
        "data": {field: _b64(value) for field, value in data.items()},
    }


def parse_key_secret(secret: dict, key: str | None = None) -> ApiKey:
    """The grant stored in a key Secret (as a dict with base64 `data`).

    With `key`, also checks that the stored hash is the key's in full (the Secret name
    holds only a prefix of it), in constant time.
    """
    try:
        data = {field: base64.b64decode(value).decode() for field, value in (secret.get("data") or {}).items()}
        stored_hash = data["keyHash"]
        tenant = data["tenant"]
        scopes = frozenset(scope for scope in data["scopes"].split(",") if scope)
        name = secret["metadata"]["name"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ApiKeyError(f"not an API key Secret: {exc}") from exc
    if key is not None and not hmac.compare_digest(stored_hash, key_hash(key)):
        raise ApiKeyError("key does not match the stored hash")
    return ApiKey(tenant=tenant, scopes=scopes, description=data.get("description", ""), name=name)
