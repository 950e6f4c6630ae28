"""The one-line errors of `tuneforge keys` for answers the real API server seldom gives (the
common ones run through the real CLI in tests/integration/test_keys_cli.py), and the
namespace `--create-namespace` creates."""

from __future__ import annotations

from kubernetes.client.rest import ApiException
from urllib3.exceptions import MaxRetryError, ProtocolError

from tuneforge.api.v1alpha1.labels import RESTRICTED_NAMESPACE_LABELS
from tuneforge.gateway.keys import api_error_line, tenant_namespace, unreachable_line


def _refusal(status: int, reason: str, body: str | None) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = body
    return exc


def test_an_answer_without_a_status_message_is_summarised():
    for body in (None, "<html>bad gateway</html>", '{"kind": "Status"}'):
        assert api_error_line(_refusal(502, "Bad Gateway", body)) == (
            "the Kubernetes API server answered 502 Bad Gateway")


def test_a_multi_line_status_message_stays_on_one_line():
    body = '{"kind": "Status", "message": "admission webhook \\"x\\" denied the request:\\n  quota exceeded"}'
    assert api_error_line(_refusal(403, "Forbidden", body)) == (
        'the Kubernetes API server answered 403 Forbidden: admission webhook "x" denied the request: quota exceeded')


def test_an_unreachable_server_is_named_with_the_cause():
    cause = ProtocolError("Connection aborted.")
    assert unreachable_line("https://k8s.example:6443", MaxRetryError(None, "/api", cause)) == (
        "cannot reach the Kubernetes API server at https://k8s.example:6443: Connection aborted.")


def test_a_created_tenant_namespace_enforces_restricted():
    assert tenant_namespace("team-a") == {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "team-a", "labels": RESTRICTED_NAMESPACE_LABELS}}
