"""The webhook's event, one delivery attempt against a real HTTP receiver, the backoff,
and the secret the platform derives for a job."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tuneforge.api.v1alpha1 import FineTuningJobResource
from tuneforge.controllers import webhook
from tuneforge.webhook_signing import SECRET_PREFIX, job_signing_secret, sign


def _job() -> FineTuningJobResource:
    return FineTuningJobResource.model_validate({
        "metadata": {"name": "ftjob-abc", "namespace": "team", "uid": "u-1"},
        "spec": {"baseModel": "smollm2", "trainingFile": "file-0123456789ab",
                 "notifications": {"webhookUrl": "https://hooks.example/ft"}},
    })


@pytest.mark.parametrize(("phase", "event"), [
    ("Succeeded", "training.completed"), ("Failed", "training.failed"), ("Cancelled", "training.cancelled")])
def test_events_are_named_as_the_platform_api_documents_them(phase: str, event: str) -> None:
    status = {"phase": phase, "finishedAt": "2026-01-01T00:00:00Z", "fineTunedModel": None, "trainedTokens": 42}
    body = webhook.payload(_job(), status)
    assert body["type"] == event
    assert body["id"] == f"ftevent-u-1-{body['data']['status']}"
    assert body["created_at"] == 1767225600 and body["data"]["trained_tokens"] == 42


class _Receiver(BaseHTTPRequestHandler):
    status = 204

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", handler
    server.shutdown()


@pytest.mark.parametrize(("status", "outcome"), [
    (200, webhook.Outcome.delivered), (204, webhook.Outcome.delivered),
    (500, webhook.Outcome.retry), (503, webhook.Outcome.retry), (408, webhook.Outcome.retry),
    (429, webhook.Outcome.retry), (400, webhook.Outcome.refused), (404, webhook.Outcome.refused),
])
def test_one_attempt_tells_delivered_from_retry_from_refused(receiver, status: int, outcome) -> None:
    url, handler = receiver
    handler.status = status
    result = webhook.attempt(url, b"{}", {"Content-Type": "application/json"}, timeout=5)
    assert result.outcome is outcome and result.message == f"webhook answered {status}"


def test_an_unreachable_receiver_is_retried() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    port = server.server_port
    server.server_close()
    result = webhook.attempt(f"http://127.0.0.1:{port}/hook", b"{}", {}, timeout=5)
    assert result.outcome is webhook.Outcome.retry and result.message.startswith("webhook unreachable: ConnectError")


def test_backoff_doubles_up_to_ten_minutes() -> None:
    delays = [webhook.retry_delay(attempt, 10) for attempt in range(1, 9)]
    assert delays[:4] == [timedelta(seconds=s) for s in (10, 20, 40, 80)]
    assert delays[-2:] == [timedelta(minutes=10)] * 2


def test_the_platform_secret_is_the_job_s_own() -> None:
    secret = job_signing_secret("platform-key", "team", "ftjob-abc")
    assert secret.startswith(SECRET_PREFIX) and len(secret) > 40
    assert secret == job_signing_secret("platform-key", "team", "ftjob-abc")
    assert secret != job_signing_secret("platform-key", "team", "ftjob-abd")
    assert secret != job_signing_secret("platform-key", "other", "ftjob-abc")
    assert secret != job_signing_secret("another-key", "team", "ftjob-abc")
    body = b'{"type": "training.completed"}'
    assert sign(secret.encode(), body) == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
