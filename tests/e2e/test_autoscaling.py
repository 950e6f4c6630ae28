"""Serving at scale on the local platform (CPU engines, the real API server, the official
openai client): ModelDeployments that scale to zero and back, up under load and down after
it, and adapter-aware routing across replicas.

Each test makes its own ModelDeployment in the tenant namespace, serving LoRA adapters made
with peft under their own names, and deletes it at the end, so no other test's requests
reach it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.api.v1alpha1.labels import Label
from tuneforge.local.devstack import TINY, DevStack, tiny_model_dir

from tests.support.devstack import pods_of, wait_for
from tests.support.lora import make_adapter

PROMPT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def adapters(dev_stack: DevStack) -> dict[str, str]:
    """Four LoRA adapters of the tiny model in the store, by the model name they serve under."""
    names = [f"assistant-{letter}" for letter in "abcd"]
    root = dev_stack.store_dir / "autoscaling-adapters"
    return {name: f"file://{make_adapter(tiny_model_dir(dev_stack.settings), root / name, seed=i, rank=4)}"
            for i, name in enumerate(names)}


@pytest.fixture
def deploy(dev_stack: DevStack) -> Iterator:
    custom = client.CustomObjectsApi(dev_stack.api_client)
    created: list[str] = []

    def create(name: str, spec: dict) -> str:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
                "metadata": {"name": name, "namespace": dev_stack.tenant},
                "spec": {"baseModel": TINY, "engine": "cpu", **spec}}
        custom.create_namespaced_custom_object(GROUP, VERSION, dev_stack.tenant, "modeldeployments", body)
        created.append(name)
        return name

    yield create
    for name in created:
        custom.delete_namespaced_custom_object(GROUP, VERSION, dev_stack.tenant, "modeldeployments", name)
    for name in created:
        wait_for(f"the Pods of {name} to go", lambda name=name: not serving_pods(dev_stack, name), timeout=120)


def mdep(stack: DevStack, name: str) -> dict:
    return client.CustomObjectsApi(stack.api_client).get_namespaced_custom_object(
        GROUP, VERSION, stack.tenant, "modeldeployments", name)


def autoscaling_status(stack: DevStack, name: str) -> dict:
    return (mdep(stack, name).get("status") or {}).get("autoscaling") or {}


def serving_pods(stack: DevStack, name: str) -> list[dict]:
    return pods_of(stack, stack.tenant, f"{Label.MODEL_DEPLOYMENT}={name}")


def ready_pods(stack: DevStack, name: str) -> list[dict]:
    return [pod for pod in serving_pods(stack, name)
            if any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])]


def scaled_to_zero(stack: DevStack, name: str) -> bool:
    return autoscaling_status(stack, name).get("desiredReplicas") == 0 and not serving_pods(stack, name)


def scale_ups_from_zero(stack: DevStack, name: str) -> int:
    """How often the autoscaler started the deployment for held requests (its Events)."""
    events = client.CoreV1Api(stack.api_client).list_namespaced_event(
        stack.tenant, field_selector=f"involvedObject.name={name}").items
    return sum(event.count or 1 for event in events
               if event.reason == "Scaled" and event.message.startswith("0 -> 1 replicas: ")
               and "waiting for a replica" in event.message)


def ask(openai_client: openai.OpenAI, model: str, **options) -> str:
    reply = openai_client.chat.completions.create(model=model, messages=PROMPT, max_tokens=4, **options)
    return reply.choices[0].message.content


def engine_figures(pod: dict) -> dict[str, float]:
    """An engine's adapter loads and requests served per model, from its /metrics."""
    port = next(p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []
                if p.get("name") == "http")
    text = httpx.get(f"http://{pod['status']['podIP']}:{port}/metrics", timeout=10).text
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tuneforge_adapter_loads_total":
                figures["loads"] = sample.value
            elif sample.name == "vllm:e2e_request_latency_seconds_count":
                figures[sample.labels["model_name"]] = sample.value
    return figures


def test_a_deployment_goes_to_zero_when_idle_and_requests_bring_it_back(
        dev_stack: DevStack, openai_client: openai.OpenAI, adapters: dict[str, str], deploy) -> None:
    model = "assistant-a"
    name = deploy("scale-from-zero", {
        "adapters": [{"name": model, "source": adapters[model]}],
        "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "targetInFlight": 1, "windowSeconds": 2,
                        "scaleDownDelaySeconds": 4, "scaleUpTimeoutSeconds": 1},
    })
    wait_for("the deployment to serve its adapter",
             lambda: model in (mdep(dev_stack, name).get("status") or {}).get("servedModels", []), timeout=60)
    # Its first replica is still starting: a request that waits longer than the deployment's
    # scale-up timeout gets 503 with Retry-After, in OpenAI's error format.
    with pytest.raises(openai.InternalServerError) as refused:
        ask(openai_client, model)
    assert refused.value.status_code == 503 and refused.value.code == "model_scaling_up"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.body["param"] == "model"

    # Idle for the delay, it goes to zero.
    client.CustomObjectsApi(dev_stack.api_client).patch_namespaced_custom_object(
        GROUP, VERSION, dev_stack.tenant, "modeldeployments", name,
        {"spec": {"autoscaling": {"scaleUpTimeoutSeconds": 120}}})
    wait_for("the idle deployment to scale to zero", lambda: scaled_to_zero(dev_stack, name), timeout=180)
    assert autoscaling_status(dev_stack, name)["reason"] == "no requests for 4s"

    # A streamed and a plain request arriving at zero wait together while one replica starts.
    def stream() -> list:
        return list(openai_client.chat.completions.create(model=model, messages=PROMPT, max_tokens=4, stream=True))

    with ThreadPoolExecutor(2) as pool:
        streamed, plain = pool.submit(stream), pool.submit(ask, openai_client, model)
        chunks, answer = streamed.result(), plain.result()
    assert chunks and chunks[-1].choices[-1].finish_reason in ("stop", "length") and answer
    assert scale_ups_from_zero(dev_stack, name) == 1


def test_sustained_load_scales_up_to_max_replicas_and_back_down_when_it_stops(
        dev_stack: DevStack, openai_client: openai.OpenAI, adapters: dict[str, str], deploy) -> None:
    model = "assistant-b"
    name = deploy("scale-with-load", {
        "adapters": [{"name": model, "source": adapters[model]}],
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "targetInFlight": 1, "windowSeconds": 2,
                        "scaleDownDelaySeconds": 4},
    })
    wait_for("the first replica", lambda: ready_pods(dev_stack, name), timeout=180)
    stop = threading.Event()
    served = itertools.count()

    def client_loop() -> None:
        while not stop.is_set():
            ask(openai_client, model)
            next(served)

    with ThreadPoolExecutor(3) as pool:
        loops = [pool.submit(client_loop) for _ in range(3)]
        try:
            wait_for("a second ready replica under load", lambda: len(ready_pods(dev_stack, name)) == 2, timeout=180)
            scaled_up = autoscaling_status(dev_stack, name)
            assert scaled_up["desiredReplicas"] == 2 and "over target 1 per replica" in scaled_up["reason"]
            time.sleep(2)  # both replicas serve
        finally:
            stop.set()
        for loop in loops:
            loop.result()  # every request under load was answered
    assert next(served) > 6
    wait_for("the load to stop counting and one replica to go",
             lambda: autoscaling_status(dev_stack, name).get("desiredReplicas") == 1
             and len(serving_pods(dev_stack, name)) == 1, timeout=120)
    assert "under target 1 per replica for 4s" in autoscaling_status(dev_stack, name)["reason"]


def test_adapter_aware_routing_keeps_four_models_on_two_replicas_without_thrashing(
        dev_stack: DevStack, openai_client: openai.OpenAI, adapters: dict[str, str], deploy) -> None:
    """Each replica holds at most 2 adapters and 4 are in rotation: only routing that sends
    each model to the replica holding it avoids reloading adapters on every request."""
    name = deploy("lora-affinity", {
        "replicas": 2, "maxAdapters": 2,
        "adapters": [{"name": model, "source": source} for model, source in adapters.items()],
    })
    wait_for("two ready replicas", lambda: len(ready_pods(dev_stack, name)) == 2, timeout=180)
    models = list(adapters)
    rotation = [models[i % len(models)] for i in range(80)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda model: ask(openai_client, model), rotation[:20]))  # warm up
        pods = ready_pods(dev_stack, name)
        before = [engine_figures(pod) for pod in pods]
        list(pool.map(lambda model: ask(openai_client, model), rotation[20:]))
        after = [engine_figures(pod) for pod in pods]
    measured = len(rotation) - 20
    served = sum(after[i].get(m, 0) - before[i].get(m, 0) for i in range(2) for m in models)
    loads = sum(after[i]["loads"] - before[i]["loads"] for i in range(2))
    assert served == measured
    assert (measured - loads) / measured >= 0.95, f"{loads:.0f} adapter loads in {measured} requests"
    holders = {m: [i for i in range(2) if after[i].get(m, 0) > before[i].get(m, 0)] for m in models}
    assert all(len(replicas) == 1 for replicas in holders.values()), holders
