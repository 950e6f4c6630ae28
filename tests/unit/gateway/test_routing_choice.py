"""Which replica a chat request goes to (gateway.routing.Router.choose) and how adapters
are loaded and evicted on the replicas, against a real HTTP server standing in for the
engines' adapter endpoints."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from tuneforge.gateway.routing import Adapter, Pod, Route, Router


def pods(count: int, url: str = "http://127.0.0.1:1") -> list[Pod]:
    return [Pod(uid=f"uid-{i}", name=f"pod-{i}", url=url, load_url=url) for i in range(count)]


def route(replicas: list[Pod], adapter: str | None = None, *, saturation: int = 4, max_adapters: int = 8) -> Route:
    return Route(namespace="team", deployment="d", model=adapter or "base", pods=replicas,
                 adapter=Adapter(adapter, f"/adapters/{adapter}") if adapter else None, max_adapters=max_adapters,
                 token="t", saturation=saturation)


def router(policy: str = "adapter-aware") -> Router:
    return Router(kube=None, http=None, cache_seconds=0, policy=policy)


def hold(router_: Router, pod: Pod, name: str) -> None:
    router_._loaded.setdefault(pod.uid, {})[name] = None


def busy(router_: Router, pod: Pod, requests: int, on: Route) -> None:
    for _ in range(requests):
        router_.started(pod, on)


def test_base_model_requests_go_to_the_least_loaded_replica_and_equal_loads_take_turns():
    r, replicas = router(), pods(3)
    base = route(replicas)
    busy(r, replicas[0], 2, base)
    busy(r, replicas[1], 1, base)
    assert r.choose(base) is replicas[2]
    assert {r.choose(base).name for _ in range(6)} == {"pod-2"}
    busy(r, replicas[2], 1, base)
    assert {r.choose(base).name for _ in range(6)} == {"pod-1", "pod-2"}


def test_an_adapter_request_prefers_a_replica_holding_it_over_a_less_loaded_one():
    r, replicas = router(), pods(3)
    ft = route(replicas, "ft:a")
    hold(r, replicas[1], "ft:a")
    busy(r, replicas[1], 3, ft)
    assert all(r.choose(ft) is replicas[1] for _ in range(5))


def test_the_least_loaded_holder_wins_and_without_holders_the_least_loaded_replica():
    r, replicas = router(), pods(3)
    ft = route(replicas, "ft:a")
    hold(r, replicas[0], "ft:a")
    hold(r, replicas[2], "ft:a")
    busy(r, replicas[0], 2, ft)
    assert r.choose(ft) is replicas[2]
    other = route(replicas, "ft:b")
    busy(r, replicas[2], 1, ft)
    assert r.choose(other) is replicas[1]


def test_a_new_adapter_goes_where_there_is_room_rather_than_evict_one():
    r, replicas = router(), pods(2)
    for name in ("ft:a", "ft:b"):
        hold(r, replicas[0], name)
    busy(r, replicas[1], 3, route(replicas))
    assert r.choose(route(replicas, "ft:c", max_adapters=2)) is replicas[1]
    assert r.choose(route(replicas, "ft:c", max_adapters=3)) is replicas[0]


def test_a_saturated_holder_spreads_the_adapter_to_the_least_loaded_replica():
    r, replicas = router(), pods(2)
    ft = route(replicas, "ft:hot", saturation=4)
    hold(r, replicas[0], "ft:hot")
    busy(r, replicas[0], 3, ft)
    assert r.choose(ft) is replicas[0]
    busy(r, replicas[0], 1, ft)
    assert r.choose(ft) is replicas[1]
    busy(r, replicas[1], 4, ft)  # just as loaded: no point in moving
    assert r.choose(ft) is replicas[0]


def test_excluded_replicas_are_skipped_and_none_is_left_at_the_end():
    r, replicas = router(), pods(2)
    ft = route(replicas, "ft:a")
    hold(r, replicas[0], "ft:a")
    assert r.choose(ft, {"uid-0"}) is replicas[1]
    assert r.choose(ft, {"uid-0", "uid-1"}) is None


def test_round_robin_ignores_adapters_and_load():
    r, replicas = router("round-robin"), pods(3)
    ft = route(replicas, "ft:a")
    hold(r, replicas[0], "ft:a")
    busy(r, replicas[1], 10, ft)
    assert [r.choose(ft).name for _ in range(6)] == ["pod-0", "pod-1", "pod-2"] * 2


def test_in_flight_counts_return_to_zero():
    r, replicas = router(), pods(1)
    base = route(replicas)
    busy(r, replicas[0], 2, base)
    r.finished(replicas[0], base)
    r.finished(replicas[0], base)
    assert r.load(replicas[0]) == 0 and r._in_flight == {}


def test_adapters_beyond_max_adapters_are_unloaded_from_the_engine_least_recently_used_first():
    calls: list[tuple[str, str]] = []

    async def load(request: web.Request) -> web.Response:
        calls.append(("load", (await request.json())["lora_name"]))
        return web.Response(text="ok")

    async def unload(request: web.Request) -> web.Response:
        calls.append(("unload", (await request.json())["lora_name"]))
        return web.Response(text="ok")

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/v1/load_lora_adapter", load)
        app.router.add_post("/v1/unload_lora_adapter", unload)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as http:
                r = Router(kube=None, http=http, cache_seconds=0)
                replica = pods(1, f"http://127.0.0.1:{port}")[0]
                for name in ("ft:a", "ft:b", "ft:a", "ft:c", "ft:c"):
                    await r.ensure_adapter(replica, route([replica], name, max_adapters=2), "req")
                assert r.holds(replica, Adapter("ft:a", "")) and not r.holds(replica, Adapter("ft:b", ""))
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
    assert calls == [("load", "ft:a"), ("load", "ft:b"), ("load", "ft:c"), ("unload", "ft:b")]
