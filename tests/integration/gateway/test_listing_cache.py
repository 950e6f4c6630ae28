"""Job and batch lists served from watches of the real API server: what another writer
(kubectl, the controller, another gateway replica) does reaches the lists, the gateway's
own writes are in its very next list, and a namespace larger than the cache is still
listed, from the API server."""

from __future__ import annotations

import asyncio
import time

from gateway_testkit import training_lines
from kubernetes import client
from prometheus_client import REGISTRY

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.gateway import ids
from tuneforge.gateway.kube import Kube
from tuneforge.gateway.listing import ListingCache
from tuneforge.gateway.settings import gateway_settings


def _reads(source: str) -> float:
    return REGISTRY.get_sample_value("tuneforge_gateway_list_reads_total", {"source": source}) or 0.0


def _job(name: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuningJob", "metadata": {"name": name},
            "spec": {"baseModel": "some-base", "trainingFile": "file-0123456789ab"}}


async def _eventually(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the watch did not deliver the change"
        await asyncio.sleep(0.05)


async def test_changes_made_elsewhere_reach_the_cached_list(api_client: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api_client)
    first = ids.new_id("ftjob")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetuningjobs", _job(first))
    listing = ListingCache(Kube(api_client), max_objects=100, idle_seconds=600)
    try:
        # The first list reads the API server while the watch starts.
        assert [r["metadata"]["name"] for r in await listing.list("finetuningjobs", namespace)] == [first]

        async def names() -> set[str]:
            return {r["metadata"]["name"] for r in await listing.list("finetuningjobs", namespace)}

        second = ids.new_id("ftjob")
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetuningjobs", _job(second))

        async def both_listed() -> bool:
            return await names() == {first, second}

        await _eventually(both_listed)
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "finetuningjobs", first,
                                                     {"status": {"phase": "Running"}})

        async def status_seen() -> bool:
            listed = {r["metadata"]["name"]: r for r in await listing.list("finetuningjobs", namespace)}
            return (listed[first].get("status") or {}).get("phase") == "Running"

        await _eventually(status_seen)
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "finetuningjobs", second)

        async def deletion_seen() -> bool:
            return await names() == {first}

        from_cache = _reads("cache")
        await _eventually(deletion_seen)
        assert _reads("cache") > from_cache, "the lists after the first did not come from the watch"
        listed = await listing.list("finetuningjobs", namespace)
        assert [set(entry) for entry in listed[0]["metadata"]["managedFields"]] == [{"time"}]
        assert listing.object_count == 1
    finally:
        listing.close()


async def _served_from_cache(listing: ListingCache, plural: str, namespace: str) -> bool:
    before = _reads("cache")
    await listing.list(plural, namespace)
    return _reads("cache") > before


async def test_a_replica_lists_its_own_writes_at_once(api_client: client.ApiClient, namespace: str) -> None:
    kube = Kube(api_client)
    listing = ListingCache(kube, max_objects=1000, idle_seconds=600)
    try:
        await _eventually(lambda: _served_from_cache(listing, "finetuningjobs", namespace))
        from_cache, from_api = _reads("cache"), _reads("api")
        created: list[str] = []
        for _ in range(15):
            name = ids.new_id("ftjob")
            await kube.create("finetuningjobs", namespace, _job(name))
            created.append(name)
            assert {r["metadata"]["name"] for r in await listing.list("finetuningjobs", namespace)} == set(created)
            await kube.patch("finetuningjobs", namespace, name, {"spec": {"cancel": True}})
            listed = {r["metadata"]["name"]: r for r in await listing.list("finetuningjobs", namespace)}
            assert listed[name]["spec"]["cancel"] is True
        await kube.delete("finetuningjobs", namespace, created[0])
        assert created[0] not in {r["metadata"]["name"] for r in await listing.list("finetuningjobs", namespace)}
        # Each list waited for the watch to deliver the write before it, none read directly.
        assert (_reads("cache") - from_cache, _reads("api") - from_api) == (31, 0)
    finally:
        listing.close()


async def test_a_namespace_larger_than_the_cache_is_listed_from_the_api_server(
        api_client: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api_client)
    names = {ids.new_id("ftjob") for _ in range(5)}
    for name in names:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetuningjobs", _job(name))
    listing = ListingCache(Kube(api_client), max_objects=3, idle_seconds=600)
    try:
        for _ in range(3):
            from_api = _reads("api")
            assert {r["metadata"]["name"] for r in await listing.list("finetuningjobs", namespace)} == names
            assert _reads("api") == from_api + 1
            await asyncio.sleep(0.3)  # time for the watch's snapshot, which finds it too large
        assert listing.object_count == 0
    finally:
        listing.close()


def test_the_gateway_lists_its_writes_through_the_openai_client(tenant, base_model, gateway) -> None:
    """create, then list, as a script does it: the new job is on the first page every time,
    and a cancel shows in the list as in a retrieve; all but the first list from the watch."""
    assert gateway_settings().list_cache_max_objects > 0
    _, api = tenant
    training = api.files.create(file=("train.jsonl", training_lines()), purpose="fine-tune")
    api.fine_tuning.jobs.list()
    from_cache = _reads("cache")
    for _ in range(10):
        job = api.fine_tuning.jobs.create(model=base_model, training_file=training.id)
        assert api.fine_tuning.jobs.list(limit=1).data[0].id == job.id
        cancelled = api.fine_tuning.jobs.cancel(job.id)
        [listed] = [j for j in api.fine_tuning.jobs.list(limit=100).data if j.id == job.id]
        assert listed == api.fine_tuning.jobs.retrieve(job.id) == cancelled
        assert listed.status == "cancelled"
    assert _reads("cache") >= from_cache + 15
