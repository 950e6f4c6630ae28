"""The chat proxy against a loopback model server standing in for a serving Pod.

The Pod object is real (created in the API server, its status patched to Running/Ready
with pod IP 127.0.0.1 and the server's port), so routing goes through exactly what a
kubelet would report: ModelDeployment -> Deployment selector -> ready Pods -> IP:port.
"""

from __future__ import annotations

import io
import time

import httpx
import openai
import pytest
from gateway_testkit import (
    KEEP_TALKING,
    ServerThread,
    make_upstream,
    platform_serving_key,
    ready_shared_deployment,
    training_lines,
)
from kubernetes import client
from prometheus_client import REGISTRY

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.config import settings
from tuneforge.local.controlplane import free_port
from tuneforge.serving_auth import deployment_token

pytestmark = pytest.mark.integration


@pytest.fixture
def shared_deployment(api_client, base_model):
    """The base model's shared ModelDeployment with one ready Pod: the loopback upstream."""
    upstream = make_upstream(base_model)
    port = free_port()
    with ready_shared_deployment(api_client, settings().system_namespace, base_model, port), \
            ServerThread(upstream, port):
        yield upstream


def _fine_tuned_model(api: openai.OpenAI, api_client, namespace: str, base_model: str) -> str:
    """A succeeded job's model, with status as the controller would write it."""
    train = api.files.create(file=("t.jsonl", io.BytesIO(training_lines())), purpose="fine-tune")
    job = api.fine_tuning.jobs.create(model=base_model, training_file=train.id, suffix="chat")
    model = f"ft:{base_model}:{namespace}:chat:{job.id}"
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "finetuningjobs", job.id,
        {"status": {"phase": "Succeeded", "fineTunedModel": model, "adapterUri": f"file:///store/{job.id}/adapter"}})
    return model


def test_base_model_chat_plain_and_streamed(tenant, base_model, shared_deployment) -> None:
    _, api = tenant
    messages = [{"role": "user", "content": "hi"}]
    reply = api.chat.completions.with_raw_response.create(model=base_model, messages=messages,
                                                          extra_headers={"x-request-id": "req-abc"})
    assert reply.headers["x-request-id"] == "req-abc"
    assert reply.parse().choices[0].message.content == f"hello from {base_model}"
    assert shared_deployment.state.requests[-1]["request_id"] == "req-abc"

    arrivals, text = [], ""
    for chunk in api.chat.completions.create(model=base_model, messages=messages, stream=True):
        arrivals.append(time.monotonic())
        text += chunk.choices[0].delta.content or ""
    assert text == f"hello from {base_model}"
    # The upstream pauses 0.2 s between chunks; a buffering proxy would deliver them at once.
    assert arrivals[-1] - arrivals[0] > 0.3
    assert shared_deployment.state.loads == []


def test_a_client_leaving_mid_stream_stops_the_engine(tenant, base_model, shared_deployment) -> None:
    """The gateway closes the engine's connection as soon as its client is gone, so the
    engine stops generating, and the request no longer counts as in flight."""
    _, api = tenant
    stream = api.chat.completions.create(model=base_model, messages=[{"role": "user", "content": KEEP_TALKING}],
                                         stream=True)
    assert next(iter(stream)).choices[0].delta.content == " word"
    stream.close()
    deadline = time.monotonic() + 3  # the whole answer would take 5 s
    while not shared_deployment.state.abandoned_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shared_deployment.state.abandoned_streams and shared_deployment.state.abandoned_streams[0] < 60
    deadline = time.monotonic() + 2
    while REGISTRY.get_sample_value("tuneforge_gateway_in_flight_requests", {"model": base_model}) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert REGISTRY.get_sample_value("tuneforge_gateway_in_flight_requests", {"model": base_model}) == 0


def test_fine_tuned_model_loads_adapter_once(tenant, api_client, base_model, shared_deployment) -> None:
    namespace, api = tenant
    model = _fine_tuned_model(api, api_client, namespace, base_model)
    messages = [{"role": "user", "content": "hi"}]
    first = api.chat.completions.create(model=model, messages=messages)
    assert first.choices[0].message.content == f"hello from {model}"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       api.chat.completions.create(model=model, messages=messages, stream=True))
    assert streamed == f"hello from {model}"
    assert [load["lora_name"] for load in shared_deployment.state.loads] == [model]
    assert shared_deployment.state.loads[0]["lora_path"].endswith("/adapter")

    # The engine forgets the adapter (restart): the gateway reloads it and the request succeeds.
    shared_deployment.state.adapters.clear()
    api.chat.completions.create(model=model, messages=messages)
    assert len(shared_deployment.state.loads) == 2


def test_every_call_to_a_serving_pod_carries_the_deployments_token(tenant, api_client, base_model,
                                                                   shared_deployment) -> None:
    """The engines refuse calls without their deployment's token (tuneforge.serving_auth);
    the gateway derives it from the platform key and the deployment it routed to."""
    namespace, api = tenant
    model = _fine_tuned_model(api, api_client, namespace, base_model)
    api.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    system = settings().system_namespace
    [deployment] = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        GROUP, VERSION, system, "modeldeployments", label_selector=f"tuneforge.io/base-model={base_model}")["items"]
    token = deployment_token(platform_serving_key(api_client, system), system, deployment["metadata"]["name"],
                             deployment["metadata"]["uid"])
    assert shared_deployment.state.authorizations[-2:] == [f"Bearer {token}"] * 2  # the load, then the chat


def test_chat_errors(tenant, gateway, base_model, shared_deployment) -> None:
    namespace, api = tenant
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=base_model, messages=messages, max_tokens=0)
    # The upstream's own error, with OpenAI's type instead of the engine's exception name.
    assert (exc.value.param, exc.value.code, exc.value.type) == ("max_tokens", "invalid_value", "invalid_request_error")
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=base_model, messages=messages, max_tokens=-1)
    # vLLM's shape: a numeric code and the body location as param.
    assert (exc.value.param, exc.value.code, exc.value.type) == ("max_tokens", "invalid_request", "invalid_request_error")
    assert exc.value.body["message"] == "1 validation error: max_tokens"
    with pytest.raises(openai.NotFoundError) as exc:
        api.chat.completions.create(model=f"ft:{base_model}:{namespace}:x:ftjob-0000deadbeef", messages=messages)
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="no-such-model", messages=messages)
    key = gateway.key(namespace, ["chat"])
    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          content=b"{not json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": base_model})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_nulls_reach_the_engine_as_sent_and_bad_parameters_never_do(tenant, base_model, shared_deployment) -> None:
    """Parameters the reference marks nullable may be null (the openai client sends None as
    null); one outside its documented range is the gateway's 400, for either engine."""
    _, api = tenant
    messages = [{"role": "user", "content": "hi"}]
    nulls = dict.fromkeys(("frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "max_completion_tokens",
                           "seed", "stop", "temperature", "top_p", "logit_bias", "n"))
    reply = api.chat.completions.create(model=base_model, messages=messages, stream=None, **nulls)
    assert reply.choices[0].message.content == f"hello from {base_model}"
    sent = shared_deployment.state.requests[-1]["body"]
    assert {name: sent[name] for name in [*nulls, "stream"]} == {**nulls, "stream": None}
    arrived = len(shared_deployment.state.requests)
    for parameters, param in (({"temperature": 2.5}, "temperature"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
                              ({"logit_bias": {"13": 150}}, "logit_bias"), ({"top_logprobs": 3}, "top_logprobs"),
                              ({"presence_penalty": -2.5}, "presence_penalty")):
        with pytest.raises(openai.BadRequestError) as exc:
            api.chat.completions.create(model=base_model, messages=messages, **parameters)
        assert (exc.value.param, exc.value.code, exc.value.type) == (param, "invalid_value", "invalid_request_error")
    assert len(shared_deployment.state.requests) == arrived


def test_a_replica_that_refuses_connections_is_skipped(tenant, api_client, base_model) -> None:
    """Two ready Pods, one of them not listening (its engine restarting): every request is
    answered, by the live one."""
    _, api = tenant
    upstream, live, dead = make_upstream(base_model), free_port(), free_port()
    with ready_shared_deployment(api_client, settings().system_namespace, base_model, dead, live), \
            ServerThread(upstream, live):
        for _ in range(4):
            reply = api.with_options(max_retries=0).chat.completions.create(
                model=base_model, messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == f"hello from {base_model}"
    assert len(upstream.state.requests) == 4


def test_no_reachable_replica_is_a_502(tenant, api_client, base_model) -> None:
    _, api = tenant
    with ready_shared_deployment(api_client, settings().system_namespace, base_model, free_port()):
        with pytest.raises(openai.InternalServerError) as exc:
            api.with_options(max_retries=0).chat.completions.create(
                model=base_model, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert exc.value.status_code == 502 and exc.value.code == "upstream_unreachable"
