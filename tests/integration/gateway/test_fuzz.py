"""Schemathesis against the served OpenAPI document: whatever the input, no 5xx and every
error in OpenAI's shape."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def schema(gateway, namespace):
    key = gateway.key(namespace)
    loaded = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    return loaded, key


def test_no_server_errors(schema) -> None:
    loaded, key = schema
    failures = []
    for operation in loaded.get_all_operations():
        operation = operation.ok()

        @hypothesis_settings(max_examples=8, deadline=None, derandomize=True,
                             suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {key}"}, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")
            elif response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}, response.text

        check()
    assert failures == []
