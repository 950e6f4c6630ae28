"""Requests held while a deployment scales up from zero (gateway.held). The API server is
stood in for by a recorder of the annotation patches: what the gateway tells the
autoscaler is the unit's output."""

from __future__ import annotations

import asyncio
import json

import pytest

from tuneforge.api.v1alpha1.labels import Annotation
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.held import HeldRequests


class AnnotationRecorder:
    def __init__(self) -> None:
        self.counts: list[int] = []

    async def patch(self, plural: str, namespace: str, name: str, patch: dict) -> dict:
        assert (plural, namespace, name) == ("modeldeployments", "team", "chat")
        self.counts.append(json.loads(patch["metadata"]["annotations"][Annotation.HELD_REQUESTS])["count"])
        return {}


KEY = ("team", "chat")


def test_held_requests_are_announced_and_released_together_once_a_replica_is_ready():
    async def scenario() -> tuple[list[int], list[str]]:
        kube = AnnotationRecorder()
        held = HeldRequests(kube, limit=10, timeout=30, poll_seconds=0.05)
        replica_ready = asyncio.Event()
        served: list[str] = []

        async def ready() -> bool:
            return replica_ready.is_set()

        async def request(name: str) -> None:
            async with held.hold(KEY, ready):
                served.append(name)

        waiting = [asyncio.ensure_future(request(f"r{i}")) for i in range(3)]
        await asyncio.sleep(0.2)
        assert served == [] and held.count(KEY) == 3
        replica_ready.set()
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert held.count(KEY) == 0
        return kube.counts, served

    counts, served = asyncio.run(scenario())
    assert sorted(served) == ["r0", "r1", "r2"]
    # Announced while held (at most once per poll as the queue grows), then 0 once served.
    assert 3 in counts and counts[-1] == 0 and all(count >= 1 for count in counts[:-1])


def test_a_request_that_outlives_the_timeout_gets_503_with_retry_after():
    async def scenario() -> OpenAIError:
        held = HeldRequests(AnnotationRecorder(), limit=10, timeout=0.3, poll_seconds=0.05)

        async def never() -> bool:
            return False

        with pytest.raises(OpenAIError) as caught:
            async with held.hold(KEY, never):
                pass
        assert held.count(KEY) == 0
        return caught.value

    error = asyncio.run(scenario())
    assert (error.status, error.code, error.param, error.type) == (503, "model_scaling_up", "model", "server_error")
    assert int(error.headers["Retry-After"]) >= 1
    assert error.body()["error"]["message"].startswith("The deployment 'chat' did not get a ready replica")


def test_a_full_queue_refuses_at_once_with_retry_after():
    async def scenario() -> OpenAIError:
        held = HeldRequests(AnnotationRecorder(), limit=2, timeout=5, poll_seconds=0.05)
        release = asyncio.Event()

        async def ready() -> bool:
            return release.is_set()

        async def request() -> None:
            async with held.hold(KEY, ready):
                pass

        waiting = [asyncio.ensure_future(request()) for _ in range(2)]
        await asyncio.sleep(0.1)
        with pytest.raises(OpenAIError) as caught:
            async with held.hold(KEY, ready):
                pass
        release.set()
        await asyncio.gather(*waiting)
        return caught.value

    error = asyncio.run(scenario())
    assert (error.status, error.code) == (503, "model_queue_full") and error.headers["Retry-After"]
