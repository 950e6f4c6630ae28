"""The refresh-ahead cache behind the gateway's key and route lookups, on a hand-driven
clock: what is served from memory, what waits for a load, and what is shared."""

from __future__ import annotations

import asyncio

import pytest

from tuneforge.gateway.caching import STALE_IF_UNAVAILABLE_SECONDS, RefreshingCache
from tuneforge.gateway.kube import ApiServerUnavailable

TTL = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """A load function that counts its calls and can be held open or made to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.value = "v1"
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def load(self) -> str:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> RefreshingCache[str, str]:
    return RefreshingCache(TTL, clock=clock)


async def _settle() -> None:
    """Lets background loads run to completion."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_fresh_value_is_served_without_loading(cache, clock):
    source = Source()
    assert await cache.get("k", source.load) == "v1"
    clock.now += TTL - 0.1
    source.value = "v2"
    assert await cache.get("k", source.load) == "v1"
    assert source.calls == 1


async def test_a_stale_value_is_served_while_one_background_load_refreshes_it(cache, clock):
    source = Source()
    await cache.get("k", source.load)
    clock.now += TTL + 1
    source.value, source.gate = "v2", asyncio.Event()

    assert [await cache.get("k", source.load) for _ in range(3)] == ["v1"] * 3, "nobody waits for the reload"
    await _settle()
    assert source.calls == 2, "one reload however many requests saw the stale value"

    source.gate.set()
    await _settle()
    assert await cache.get("k", source.load) == "v2"
    assert source.calls == 2


async def test_a_value_older_than_twice_the_ttl_is_loaded_in_the_request(cache, clock):
    source = Source()
    await cache.get("k", source.load)
    clock.now += 2 * TTL
    source.value = "v2"
    assert await cache.get("k", source.load) == "v2"
    assert source.calls == 2


async def test_concurrent_misses_share_one_load(cache):
    source = Source()
    source.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(cache.get("k", source.load)) for _ in range(5)]
    await _settle()
    source.gate.set()
    assert await asyncio.gather(*waiting) == ["v1"] * 5
    assert source.calls == 1


async def test_a_failed_load_reaches_every_waiter_and_caches_nothing(cache):
    source = Source()
    source.gate, source.error = asyncio.Event(), LookupError("no such deployment")
    waiting = [asyncio.ensure_future(cache.get("k", source.load)) for _ in range(2)]
    await _settle()
    source.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(result, LookupError) for result in results)

    source.gate, source.error = None, None
    assert await cache.get("k", source.load) == "v1"
    assert source.calls == 2


async def test_a_failed_background_reload_drops_the_stale_value(cache, clock, caplog):
    source = Source()
    await cache.get("k", source.load)
    clock.now += TTL + 1
    source.error = LookupError("deployment deleted")
    assert await cache.get("k", source.load) == "v1"
    await _settle()
    assert "deployment deleted" in caplog.text

    with pytest.raises(LookupError):
        await cache.get("k", source.load)


async def test_the_last_value_stands_in_while_the_api_server_is_unavailable(cache, clock, caplog):
    source = Source()
    await cache.get("k", source.load)
    source.error = ApiServerUnavailable(503, "the Kubernetes API server is unreachable")
    clock.now += TTL + 1
    assert await cache.get("k", source.load) == "v1"
    await _settle()
    assert "unreachable" in caplog.text
    clock.now += TTL
    assert await cache.get("k", source.load) == "v1"

    clock.now += STALE_IF_UNAVAILABLE_SECONDS
    with pytest.raises(ApiServerUnavailable):
        await cache.get("k", source.load)
    source.error = None
    assert await cache.get("k", source.load) == "v1"
    assert source.calls == 5


async def test_an_unavailable_api_server_with_nothing_cached_is_an_error(cache):
    source = Source()
    source.error = ApiServerUnavailable(503, "the Kubernetes API server is unreachable")
    with pytest.raises(ApiServerUnavailable):
        await cache.get("k", source.load)


async def test_forget_drops_a_value(cache):
    source = Source()
    await cache.get("k", source.load)
    cache.forget("k")
    source.value = "v2"
    assert await cache.get("k", source.load) == "v2"


async def test_a_zero_ttl_loads_every_time(clock):
    cache: RefreshingCache[str, str] = RefreshingCache(0, clock=clock)
    source = Source()
    await cache.get("k", source.load)
    await cache.get("k", source.load)
    assert source.calls == 2


async def test_a_waiter_that_goes_away_leaves_the_load_to_the_others(cache):
    source = Source()
    source.gate = asyncio.Event()
    leaving = asyncio.ensure_future(cache.get("k", source.load))
    staying = asyncio.ensure_future(cache.get("k", source.load))
    await _settle()
    leaving.cancel()
    source.gate.set()
    assert await staying == "v1"
    assert source.calls == 1
