"""API key format: hashing, scopes with wildcards, and the Secret round trip."""

from __future__ import annotations

import base64

import pytest

from tuneforge import apikeys
from tuneforge.config import settings


def test_generated_keys_are_unique_and_prefixed() -> None:
    keys = {apikeys.generate_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(key.startswith("tf-") and len(key) == 43 for key in keys)


def test_secret_stores_only_the_hash() -> None:
    key = apikeys.generate_key()
    body = apikeys.key_secret(key, tenant="team-a", scopes=["chat"], description="runner")
    decoded = {k: base64.b64decode(v).decode() for k, v in body["data"].items()}
    assert key not in str(body) and key not in str(decoded)
    assert decoded["keyHash"] == apikeys.key_hash(key)
    assert body["metadata"]["name"] == "tuneforge-apikey-" + apikeys.key_hash(key)[:20]
    assert body["metadata"]["namespace"] == settings().system_namespace
    assert body["metadata"]["labels"] == {"tuneforge.io/api-key": "true", "tuneforge.io/tenant": "team-a"}


def test_round_trip_with_wildcards_expanded() -> None:
    key = apikeys.generate_key()
    body = apikeys.key_secret(key, tenant="team-a", scopes=["files:*", "chat"], labels={"x": "y"})
    parsed = apikeys.parse_key_secret(body, key)
    assert parsed.tenant == "team-a"
    assert parsed.scopes == {"files:read", "files:write", "chat"}
    assert parsed.name == body["metadata"]["name"]
    assert body["metadata"]["labels"]["x"] == "y"


def test_parse_refuses_a_different_key() -> None:
    body = apikeys.key_secret(apikeys.generate_key(), tenant="a", scopes=["chat"])
    with pytest.raises(apikeys.ApiKeyError):
        apikeys.parse_key_secret(body, apikeys.generate_key())


def test_owner_becomes_owner_reference() -> None:
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "runner", "uid": "u-1"}
    body = apikeys.key_secret(apikeys.generate_key(), tenant="a", scopes=["chat"], owner=owner)
    (ref,) = body["metadata"]["ownerReferences"]
    assert ref["uid"] == "u-1" and ref["kind"] == "Job"


@pytest.mark.parametrize("scopes", [["files:rw"], ["nope:*"], [], [" "]])
def test_unknown_or_empty_scopes_are_refused(scopes: list[str]) -> None:
    with pytest.raises(apikeys.ApiKeyError):
        apikeys.expand_scopes(scopes)


def test_star_expands_to_everything() -> None:
    assert apikeys.expand_scopes(["*"]) == set(apikeys.SCOPES)


@pytest.mark.parametrize(
    ("granted", "required", "expected"),
    [
        (["chat"], "chat", True),
        (["files:read"], "files:write", False),
        (["files:*"], "files:write", True),
        (["*"], "batches:read", True),
        (["fine-tuning:read"], "files:read", False),
    ],
)
def test_has_scope(granted: list[str], required: str, expected: bool) -> None:
    assert apikeys.has_scope(granted, required) is expected
