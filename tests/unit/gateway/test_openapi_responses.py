"""The served OpenAPI document describes every JSON response, so clients and schemathesis
know what each route returns; dropping a route's response_model fails here."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tuneforge.gateway.app import create_app
from tuneforge.gateway.management import PREFIX as MANAGEMENT_PREFIX

PASSTHROUGHS = {
    ("post", "/v1/chat/completions"),
    ("get", "/v1/files/{file_id}/content"),
}
"""Bodies the gateway relays untouched: the engine's chat completion, a file's bytes."""
ARCHIVES = {
    ("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/adapter"),
    ("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/merged_model"),
    ("get", f"{MANAGEMENT_PREFIX}/jobs/{{job_id}}/adapter"),
    ("get", f"{MANAGEMENT_PREFIX}/jobs/{{job_id}}/merged-model"),
}
"""Tar archives of a job's published files."""
NO_BODY = {("delete", f"{MANAGEMENT_PREFIX}/jobs/{{job_id}}")}


def _document() -> dict:
    return TestClient(create_app()).get("/openapi.json").json()


DOCUMENT = _document()
OPERATIONS = [(method, path, operation) for path, methods in DOCUMENT["paths"].items()
              for method, operation in methods.items()]


def _resolve(schema: dict) -> dict:
    if "$ref" in schema:
        return DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _documented(schema: dict) -> bool:
    """A model, or a union of models, whose lists say what they hold. FastAPI writes an
    empty or property-less object schema for a route without a response_model, and a list
    of anything for an envelope whose items lost their type."""
    members = schema.get("oneOf") or schema.get("anyOf")
    if members:
        return all(_documented(member) for member in members)
    model = _resolve(schema)
    properties = model.get("properties") or {}
    return model.get("type") == "object" and bool(properties) and all(
        field.get("items") for field in properties.values() if field.get("type") == "array")


def test_both_apis_are_in_the_document() -> None:
    paths = {path for _, path, _ in OPERATIONS}
    assert any(path.startswith("/v1/") for path in paths)
    assert any(path.startswith(MANAGEMENT_PREFIX) for path in paths)
    assert PASSTHROUGHS | NO_BODY | ARCHIVES <= {(method, path) for method, path, _ in OPERATIONS}


def test_every_authenticated_route_documents_both_key_headers() -> None:
    """The schemes are declared for the document only (auth.py reads the raw headers), so
    nothing but this test notices if they stop being declared."""
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {"type": "http", "scheme": "bearer",
                                     "description": "An API key created with `tuneforge keys create`."}
    assert schemes["APIKeyHeader"]["in"] == "header" and schemes["APIKeyHeader"]["name"] == "X-API-Key"
    chat = DOCUMENT["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    authenticated = [operation for _, path, operation in OPERATIONS if path.startswith(("/v1/", MANAGEMENT_PREFIX))]
    assert all(operation.get("security") == chat["security"] for operation in authenticated)


def test_archives_are_documented_as_tar() -> None:
    for method, path in ARCHIVES:
        assert set(DOCUMENT["paths"][path][method]["responses"]["200"]["content"]) == {"application/x-tar"}


JSON_OPERATIONS = [entry for entry in OPERATIONS if entry[:2] not in PASSTHROUGHS | NO_BODY | ARCHIVES]


@pytest.mark.parametrize(("method", "path", "operation"), JSON_OPERATIONS,
                         ids=[f"{method.upper()} {path}" for method, path, _ in JSON_OPERATIONS])
def test_json_routes_document_their_response(method: str, path: str, operation: dict) -> None:
    [success] = [status for status in operation["responses"] if status.startswith("2")]
    schema = operation["responses"][success]["content"]["application/json"]["schema"]
    assert _documented(schema), f"{method.upper()} {path} has no response schema: {schema}"
