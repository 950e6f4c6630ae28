"""The journal's crash recovery and the retry policy, as single components."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from multidict import CIMultiDict

from tuneforge_inference.batch.journal import Journal
from tuneforge_inference.batch.records import Outcome
from tuneforge_inference.batch.retry import RetryPolicy, is_retryable_status, retry_after_seconds
from tuneforge_inference.batch.sender import Answer, encode

BODY = {"object": "chat.completion", "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def test_torn_last_line_is_cut_and_state_rebuilt(tmp_path):
    journal = Journal(tmp_path)
    journal.record(Outcome("a", status_code=200, request_id="r", body=BODY))
    journal.record(Outcome("b", status_code=400, request_id="r", body={"error": {}}))
    journal.record(Outcome("c", status_code=200, request_id="r", body=BODY))
    journal.save_state(validated=True, total=4)
    journal.close()
    whole = (tmp_path / "output.jsonl").read_bytes()
    with open(tmp_path / "output.jsonl", "ab") as handle:
        handle.write(b'{"id": "batch_req_x", "custom_id": "d", "respo')  # killed mid-write

    reopened = Journal(tmp_path)
    assert (tmp_path / "output.jsonl").read_bytes() == whole
    assert reopened.done == {"a", "b", "c"}
    assert reopened.counts().model_dump() == {"total": 4, "completed": 2, "failed": 1}
    assert reopened.usage_report().model_dump() == {"input_tokens": 6, "output_tokens": 4, "total_tokens": 10}
    reopened.record(Outcome("d", error_code="batch_expired", error_message="late"))
    reopened.close()
    ids = [json.loads(line)["custom_id"] for f in ("output.jsonl", "errors.jsonl") for line in (tmp_path / f).open()]
    assert sorted(ids) == ["a", "b", "c", "d"]


def test_garbage_after_a_newline_is_cut_too(tmp_path):
    journal = Journal(tmp_path)
    journal.record(Outcome("a", status_code=200, request_id="r", body=BODY))
    journal.close()
    with open(tmp_path / "output.jsonl", "ab") as handle:
        handle.write(b"\x00\x00\x00\n")  # what a machine crash can leave behind
    assert Journal(tmp_path).done == {"a"}
    assert (tmp_path / "output.jsonl").read_bytes().count(b"\n") == 1


def test_retryable_statuses():
    assert all(is_retryable_status(s) for s in (408, 409, 429, 500, 502, 503, 504))
    assert not any(is_retryable_status(s) for s in (200, 400, 401, 403, 404, 422))


def test_retry_after_forms():
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert retry_after_seconds(CIMultiDict({"Retry-After": "7"})) == 7
    assert retry_after_seconds(CIMultiDict({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(CIMultiDict({"retry-after": date}), now=now) == 30
    assert retry_after_seconds(CIMultiDict({"retry-after": "soon"})) is None
    assert retry_after_seconds(CIMultiDict({})) is None


def test_backoff_grows_with_jitter_and_honours_hints():
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, max_retry_after_s=60)
    rng = random.Random(0)
    for attempt, window in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 8.0)]:
        delays = [policy.delay(attempt, None, rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= window
        assert max(delays) > window / 2, "jitter should spread over the whole window"
    hinted = [policy.delay(0, 5.0, rng) for _ in range(100)]
    assert min(hinted) >= 5.0 and max(hinted) <= 5.5
    assert policy.delay(0, 3600, rng) <= 66


def test_requests_in_flight_at_a_death_are_charged_one_crash_each(tmp_path):
    journal = Journal(tmp_path)
    for custom_id in ("a", "b", "c\nwith a newline"):
        journal.dispatch(custom_id)
    journal.record(Outcome("a", status_code=200, request_id="r", body=BODY))
    journal.close()  # the process dies here: nothing emptied its dispatched log

    reopened = Journal(tmp_path)
    assert sorted(reopened.died_in_flight) == ["b", "c\nwith a newline"]
    assert reopened.state.crashes == {"b": 1, "c\nwith a newline": 1}
    reopened.dispatch("b")
    reopened.clear_dispatched()  # a clean stop abandons "b" on purpose
    reopened.close()

    again = Journal(tmp_path)
    assert again.died_in_flight == []
    assert again.state.crashes == {"b": 1, "c\nwith a newline": 1}, "a charge is counted once"
    again.dispatch("b")
    again.close()
    assert Journal(tmp_path).state.crashes == {"b": 2, "c\nwith a newline": 1}


def test_answers_become_outcomes():
    headers = CIMultiDict({"X-Request-ID": "upstream-1"})
    answered = Answer(200, headers, b'{"object": "chat.completion"}').outcome("a", "req_sent")
    assert (answered.status_code, answered.request_id, answered.body) == (200, "upstream-1", {"object": "chat.completion"})
    assert answered.succeeded

    garbled = Answer(200, CIMultiDict(), b"<html>ok</html>").outcome("b", "req_sent")
    assert garbled.status_code is None and garbled.error_code == "invalid_response"
    assert "not JSON" in garbled.error_message

    proxy_error = Answer(502, CIMultiDict(), b"<html>Bad Gateway</html>").outcome("c", "req_sent")
    assert (proxy_error.status_code, proxy_error.request_id, proxy_error.body) == (502, "req_sent", "<html>Bad Gateway</html>")
    assert not proxy_error.succeeded


def test_request_bodies_are_sent_as_compact_utf8_json():
    body = {"model": "m", "messages": [{"role": "user", "content": "Grüße, 世界"}], "temperature": 0.5}
    payload = encode(body)
    assert payload == '{"model":"m","messages":[{"role":"user","content":"Grüße, 世界"}],"temperature":0.5}'.encode()
    assert json.loads(payload) == body
