"""What the gateway takes of a webhook: which URLs either create API accepts, and the
operator's delivery records among the trainer's events in the job's event list."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.gateway.fine_tuning_service import is_webhook_url, read_events
from tuneforge.jobfiles import JobFiles
from tuneforge.storage import ArtifactStore


@pytest.mark.parametrize(("url", "valid"), [
    ("https://hooks.example/ft", True), ("http://10.0.0.7:8080/hook?x=1", True),
    ("ftp://hooks.example/ft", False), ("hooks.example/ft", False), ("https:///path", False),
    ("https://hooks.example/" + "a" * 2048, False),
])
def test_webhook_urls_the_apis_accept(url: str, valid: bool) -> None:
    assert is_webhook_url(url) is valid


def test_deliveries_sit_among_the_trainer_s_events_by_time(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    files = JobFiles.of(store, "team", "ftjob-abc")
    writer = files.log_writer("events")
    for created, message in ((100, "Training started"), (200, "Step 10"), (300, "Training finished")):
        writer.append(f'{{"created_at": {created}, "level": "info", "message": "{message}", "type": "message"}}')
    writer.flush()
    for attempt, created in ((1, 300), (2, 320)):
        files.write_platform_event({"id": f"ftevent-u-webhook-{attempt}", "created_at": created, "level": "info",
                                    "message": f"Webhook delivery {attempt}", "type": "message", "data": {}})
    files.write_platform_event({"id": "ftevent-u-webhook-2", "created_at": 320, "level": "info",
                                "message": "Webhook delivery 2", "type": "message", "data": {}})
    events = read_events(store, "team", "ftjob-abc")
    assert [e.message for e in events] == [
        "Webhook delivery 2", "Training finished", "Webhook delivery 1", "Step 10", "Training started"]
    assert len({e.id for e in events}) == len(events)
