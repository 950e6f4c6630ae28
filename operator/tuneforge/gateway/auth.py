"""Authentication and tenancy: an API key maps to one namespace and a set of scopes.

The key arrives as `Authorization: Bearer <key>` (what the openai client sends),
`Authorization: <key>` (the bare key of the reference documents' curl examples) or
`X-API-Key: <key>` (the management API's documented header), on every route of both
APIs. Its Secret is found by name (derived from the key's hash) in the system namespace, with one GET; lookups are cached for a few seconds so the hot chat path
does not hit the API server per request (a revoked key stops working within twice
`key_cache_seconds`: see `caching`). Every handler receives a `Principal` and acts inside
its tenant only.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer

from tuneforge import apikeys
from tuneforge.api.v1alpha1.labels import Label
from tuneforge.config import settings
from tuneforge.gateway.caching import RefreshingCache
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.kube import Kube
from tuneforge.gateway.settings import gateway_settings


class _DescribedBearer(HTTPBearer):
    """The Bearer scheme, for the OpenAPI description only. The key is read from the raw
    headers (which also carry a bare key, a scheme OpenAPI cannot describe), so parsing it
    here as well was per-request work for nothing: on the chat path, HTTPBearer's
    credentials model alone cost more than 1% of the gateway's CPU."""

    async def __call__(self, request: Request) -> None:
        return None


class _DescribedHeader(APIKeyHeader):
    """The X-API-Key scheme, for the OpenAPI description only (see `_DescribedBearer`)."""

    async def __call__(self, request: Request) -> None:
        return None


_bearer = _DescribedBearer(scheme_name="HTTPBearer", auto_error=False,
                           description="An API key created with `tuneforge keys create`.")
_header = _DescribedHeader(name="X-API-Key", scheme_name="APIKeyHeader", auto_error=False,
                           description="The same key, as a header.")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant namespace, the scopes granted, and which key (the name of
    its Secret: stable and not secret) so objects can record who created them."""

    tenant: str
    scopes: frozenset[str]
    key_name: str = ""


class KeyResolver:
    """Key -> Principal, cached by the key's hash (see `caching` for how long)."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._cache: RefreshingCache[str, Principal | None] = RefreshingCache(gateway_settings().key_cache_seconds)

    async def resolve(self, key: str) -> Principal | None:
        return await self._cache.get(apikeys.key_hash(key), lambda: self._lookup(key))

    async def _lookup(self, key: str) -> Principal | None:
        secret = await self.kube.get_secret(settings().system_namespace, apikeys.secret_name(key))
        if secret is None or (secret.get("metadata", {}).get("labels") or {}).get(Label.API_KEY) != "true":
            return None
        try:
            grant = apikeys.parse_key_secret(secret, key)
        except apikeys.ApiKeyError:
            return None
        return Principal(tenant=grant.tenant, scopes=grant.scopes, key_name=grant.name)


_SEND_IT = "Send it as 'Authorization: Bearer <key>', 'Authorization: <key>' or 'X-API-Key: <key>'."


def presented_key(authorization: str | None, x_api_key: str | None) -> str:
    """The key a request carries: X-API-Key, else `Authorization: Bearer <key>` or a bare
    `Authorization: <key>`. Anything else is a 401 saying what was wrong: no header, an
    empty one, `Bearer` without a key, or another scheme (`Basic ...`), whose credentials
    are never mistaken for a key."""
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    parts = (authorization or "").split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1]
    if len(parts) == 1 and parts[0].lower() != "bearer":
        return parts[0]
    if not parts:
        problem = "You didn't provide an API key."
    elif parts[0].lower() == "bearer":
        problem = "The Authorization header names the Bearer scheme but holds no single key."
    else:
        problem = f"The Authorization header uses the '{parts[0][:32]}' scheme, which carries no API key."
    raise OpenAIError(401, f"{problem} {_SEND_IT}", code="missing_api_key")


async def _principal(request: Request) -> Principal:
    headers = request.headers
    principal = await request.app.state.keys.resolve(presented_key(headers.get("authorization"),
                                                                   headers.get("x-api-key")))
    if principal is None:
        raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return principal


async def authenticate(request: Request, _bearer_scheme: None = Depends(_bearer),
                       _header_scheme: None = Depends(_header)) -> Principal:
    """The caller; the two schemes only describe the key's headers in the OpenAPI document."""
    return await _principal(request)


def require(scope: str):
    """A dependency that authenticates and insists on `scope`. It authenticates itself
    rather than depending on `authenticate`: FastAPI resolves each level of dependencies
    anew per request, a cost the chat path pays on every call."""

    async def dependency(request: Request, _bearer_scheme: None = Depends(_bearer),
                         _header_scheme: None = Depends(_header)) -> Principal:
        principal = await _principal(request)
        if not apikeys.has_scope(principal.scopes, scope):
            raise OpenAIError(403, f"This API key lacks the '{scope}' scope.", code="insufficient_scope")
        return principal

    return dependency
