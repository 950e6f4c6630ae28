"""Every list's `limit` and the chat request's parameters, as the served OpenAPI document
states them: what schemathesis and clients read, and what the routes enforce."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tuneforge.gateway.app import create_app
from tuneforge.gateway.management import PREFIX as MANAGEMENT_PREFIX

DOCUMENT = TestClient(create_app()).get("/openapi.json").json()


def _limits() -> dict[str, tuple[int, int, int]]:
    """path -> (minimum, maximum, default) of its `limit` query parameter."""
    return {path: (schema["minimum"], schema["maximum"], schema["default"])
            for path, methods in DOCUMENT["paths"].items() for operation in methods.values()
            for parameter in operation.get("parameters", []) if parameter["name"] == "limit"
            for schema in [parameter["schema"]]}


def test_every_list_takes_the_documented_limit() -> None:
    """1-100 for the job, event, checkpoint and batch lists (the reference's range); the file
    list keeps OpenAI's 1-10,000, which the reference does not document; the management
    API's own 1-100, default 20."""
    assert _limits() == {
        "/v1/fine_tuning/jobs": (1, 100, 20),
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events": (1, 100, 20),
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": (1, 100, 10),
        "/v1/batches": (1, 100, 20),
        "/v1/files": (1, 10_000, 10_000),
        f"{MANAGEMENT_PREFIX}/jobs": (1, 100, 20),
    }


def test_the_chat_request_is_documented_with_its_ranges_and_nulls() -> None:
    body = DOCUMENT["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert body["required"] and schema["required"] == ["model", "messages"] and schema["additionalProperties"]
    properties = schema["properties"]
    for name in ("frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "max_completion_tokens", "seed",
                 "stop", "stream", "temperature", "top_p", "logit_bias"):
        assert {"type": "null"} in properties[name]["anyOf"], name
    ranges = {name: [(member.get("minimum"), member.get("maximum")) for member in properties[name]["anyOf"]
                     if member["type"] != "null"] for name in ("frequency_penalty", "temperature", "top_logprobs")}
    assert ranges == {"frequency_penalty": [(-2, 2)], "temperature": [(0, 2)], "top_logprobs": [(0, 20)]}
    assert {"type": "array", "items": {"type": "string"}, "maxItems": 4} in properties["stop"]["anyOf"]
