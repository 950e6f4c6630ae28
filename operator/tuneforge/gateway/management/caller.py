"""The calling key as the gateway sees it, so a dashboard can show which tenant it acts in
and hide what the key's scopes do not allow instead of letting the user meet a 403."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from tuneforge.apikeys import SCOPES, has_scope
from tuneforge.gateway.auth import Principal, authenticate
from tuneforge.gateway.management.protocol import CallerKey

router = APIRouter()


def caller_key(principal: Principal) -> CallerKey:
    """The key's grant with wildcards (`*`, `area:*`) spelt out as the scopes they stand for."""
    return CallerKey(name=principal.key_name, tenant=principal.tenant,
                     scopes=[scope for scope in sorted(SCOPES) if has_scope(principal.scopes, scope)])


@router.get("/key", response_model=CallerKey, summary="The calling key: its tenant namespace, its name and scopes")
async def key(principal: Principal = Depends(authenticate)) -> CallerKey:
    return caller_key(principal)
