"""Sends one batch request to the target, retrying transient failures, and says how it ended.

Transient means: 429, 408/409, any 5xx, a connection failure, or no answer within the
per-request timeout. Anything else (a 400, a 404 for an unknown model) is the request's
own fault and is final at once. When retries run out, the last answer is the outcome (an
HTTP error line keeps the server's status and body) or, with no answer at all, an error
with code `connection_error` or `request_timeout`.

A 429 is backpressure, not a failure: the engine's queue is full because other batches
and users share it. It does not use up `max_retries`; the request waits (Retry-After, or
backoff up to the policy's cap) and tries again for as long as the batch runs, so ten
batches sharing one deployment finish instead of failing their overflow. A target that
never stops answering 429 leaves the request to the completion window (`batch_expired`).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from typing import Any

import httpx

from tuneforge_inference.batch.records import Outcome
from tuneforge_inference.batch.retry import RetryPolicy, is_retryable_status, retry_after_seconds

BUSY = 429


class Sender:
    """Posts request bodies to one endpoint URL through a shared client."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        timeout_s: float,
        max_retries: int,
        policy: RetryPolicy,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.url = url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.policy = policy
        self.rng = rng or random.Random()

    async def send(self, custom_id: str, body: dict[str, Any]) -> Outcome:
        attempt = 0
        throttled = 0
        while True:
            request_id = f"req_{uuid.uuid4().hex}"
            retry_after: float | None = None
            try:
                # httpx's timeout bounds each read/write; this bounds the whole exchange.
                async with asyncio.timeout(self.timeout_s):
                    response = await self.client.post(self.url, json=body, headers={"X-Request-ID": request_id})
            except (httpx.TimeoutException, TimeoutError):
                outcome = Outcome(
                    custom_id,
                    error_code="request_timeout",
                    error_message=f"no response within {self.timeout_s:g}s",
                )
            except httpx.TransportError as exc:
                outcome = Outcome(
                    custom_id, error_code="connection_error", error_message=f"{type(exc).__name__}: {exc}"
                )
            else:
                if not is_retryable_status(response.status_code):
                    return _answered(custom_id, response, request_id)
                outcome = _answered(custom_id, response, request_id)
                retry_after = retry_after_seconds(response.headers)
                if response.status_code == BUSY:
                    await asyncio.sleep(self.policy.delay(throttled, retry_after, self.rng))
                    throttled += 1
                    continue
            if attempt >= self.max_retries:
                return outcome
            await asyncio.sleep(self.policy.delay(attempt, retry_after, self.rng))
            attempt += 1


def _answered(custom_id: str, response: httpx.Response, sent_request_id: str) -> Outcome:
    """An HTTP answer as an outcome; a 2xx whose body is not JSON is no usable answer."""
    request_id = response.headers.get("x-request-id") or sent_request_id
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        if 200 <= response.status_code < 300:
            return Outcome(
                custom_id,
                error_code="invalid_response",
                error_message=f"status {response.status_code} with a body that is not JSON",
            )
        body = response.text
    return Outcome(custom_id, status_code=response.status_code, request_id=request_id, body=body)
