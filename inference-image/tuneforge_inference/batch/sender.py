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
from collections.abc import Mapping
from typing import Any

import aiohttp

from tuneforge_inference.batch.records import Outcome
from tuneforge_inference.batch.retry import RetryPolicy, is_retryable_status, retry_after_seconds

BUSY = 429


class Sender:
    """Posts request bodies to one endpoint URL through a shared session."""

    def __init__(
        self,
        client: aiohttp.ClientSession,
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
        payload = encode(body)
        attempt = 0
        throttled = 0
        while True:
            request_id = f"req_{uuid.uuid4().hex}"
            retry_after: float | None = None
            try:
                # The session's timeouts bound each connect/read; this bounds the whole exchange.
                async with asyncio.timeout(self.timeout_s):
                    answer = await self._post(payload, request_id)
            except TimeoutError:
                outcome = Outcome(
                    custom_id,
                    error_code="request_timeout",
                    error_message=f"no response within {self.timeout_s:g}s",
                )
            except aiohttp.ClientError as exc:
                outcome = Outcome(
                    custom_id, error_code="connection_error", error_message=f"{type(exc).__name__}: {exc}"
                )
            else:
                outcome = answer.outcome(custom_id, request_id)
                if not is_retryable_status(answer.status):
                    return outcome
                retry_after = retry_after_seconds(answer.headers)
                if answer.status == BUSY:
                    await asyncio.sleep(self.policy.delay(throttled, retry_after, self.rng))
                    throttled += 1
                    continue
            if attempt >= self.max_retries:
                return outcome
            await asyncio.sleep(self.policy.delay(attempt, retry_after, self.rng))
            attempt += 1

    async def _post(self, payload: bytes, request_id: str) -> Answer:
        headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
        async with self.client.post(self.url, data=payload, headers=headers) as response:
            return Answer(response.status, response.headers, await response.read())


def encode(body: dict[str, Any]) -> bytes:
    """The request body as compact UTF-8 JSON, encoded once for all its attempts. The input
    parser (tuneforge.datasets) has already refused NaN and Infinity, which are not JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class Answer:
    """An HTTP answer read in full, so the connection is back in the pool before any
    backoff sleep."""

    def __init__(self, status: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status = status
        self.headers = headers
        self.content = content

    def outcome(self, custom_id: str, sent_request_id: str) -> Outcome:
        """The answer as an outcome; a 2xx whose body is not JSON is no usable answer."""
        request_id = self.headers.get("x-request-id") or sent_request_id
        try:
            body: Any = json.loads(self.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if 200 <= self.status < 300:
                return Outcome(
                    custom_id,
                    error_code="invalid_response",
                    error_message=f"status {self.status} with a body that is not JSON",
                )
            body = self.content.decode("utf-8", errors="replace")
        return Outcome(custom_id, status_code=self.status, request_id=request_id, body=body)
