"""The CPU engine as a real HTTP server, driven by the official `openai` client.

Everything above the engine (gateway, batch runner, local platform) talks to it with
this client, so these tests pin the wire behaviour it depends on: OpenAI's response and
stream shapes, sampling parameters, vLLM's runtime adapter endpoints, errors the client
maps to its exception classes, and back-pressure the client retries through.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.support.inference_servers import BASE_NAME, RunningServer

MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]
FIXED_LENGTH = {"ignore_eos": True}


def chat(client: openai.OpenAI, model: str, **kwargs):
    return client.chat.completions.create(model=model, messages=MESSAGES, **kwargs)


def greedy_text(client: openai.OpenAI, model: str, tokens: int = 12) -> str:
    reply = chat(client, model, temperature=0, max_tokens=tokens, extra_body=FIXED_LENGTH)
    return reply.choices[0].message.content


def metric(server: RunningServer, name: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")


def test_chat_completion_has_openai_shape(cpu_server: RunningServer):
    reply = chat(cpu_server.client(), BASE_NAME, temperature=0, max_completion_tokens=6, extra_body=FIXED_LENGTH)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == BASE_NAME
    [choice] = reply.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage.prompt_tokens > 10
    assert reply.usage.completion_tokens == 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 6


def test_adapters_change_the_answer(cpu_server: RunningServer, adapter_dirs):
    client = cpu_server.client()
    response = httpx.post(
        f"{cpu_server.base_url}/v1/load_lora_adapter",
        json={"lora_name": "beta-diff", "lora_path": str(adapter_dirs["beta"])},
    )
    assert response.status_code == 200, response.text
    answers = {model: greedy_text(client, model) for model in (BASE_NAME, "alpha", "beta-diff")}
    assert len(set(answers.values())) == 3, answers
    # Greedy decoding is deterministic, so switching back gives the same answer again.
    assert greedy_text(client, "alpha") == answers["alpha"]
    assert greedy_text(client, BASE_NAME) == answers[BASE_NAME]


def test_streaming_matches_non_streaming_and_reports_usage(cpu_server: RunningServer):
    client = cpu_server.client()
    expected = greedy_text(client, "alpha", tokens=10)
    chunks = list(
        chat(client, "alpha", temperature=0, max_tokens=10, extra_body=FIXED_LENGTH, stream=True,
             stream_options={"include_usage": True})
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    *content_chunks, usage_chunk = chunks
    assert all(c.usage is None for c in content_chunks)
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 10


def test_stream_wire_format_ends_with_done(cpu_server: RunningServer):
    body = {"model": BASE_NAME, "messages": MESSAGES, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{cpu_server.base_url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert '"usage"' not in "".join(events)


def test_n_choices(cpu_server: RunningServer):
    reply = chat(cpu_server.client(), "alpha", n=3, temperature=1.0, seed=11, max_tokens=8, extra_body=FIXED_LENGTH)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens == 24
    assert len({c.message.content for c in reply.choices}) > 1


def test_stop_sequence_cuts_the_answer(cpu_server: RunningServer):
    client = cpu_server.client()
    full = greedy_text(client, "alpha", tokens=16)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.find(stop)]
    reply = chat(client, "alpha", temperature=0, max_tokens=16, stop=[stop], extra_body=FIXED_LENGTH)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    streamed = chat(client, "alpha", temperature=0, max_tokens=16, stop=stop, extra_body=FIXED_LENGTH, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_seed_makes_sampling_deterministic(cpu_server: RunningServer):
    client = cpu_server.client()

    def sample(seed: int) -> str:
        return chat(client, BASE_NAME, temperature=1.0, top_p=0.9, seed=seed, max_tokens=16,
                    extra_body=FIXED_LENGTH).choices[0].message.content

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_logprobs_shape(cpu_server: RunningServer):
    reply = chat(cpu_server.client(), "alpha", temperature=0, max_tokens=5, logprobs=True, top_logprobs=3,
                 extra_body=FIXED_LENGTH)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 5
    for entry in content:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        # Greedy picks the most likely token, so it heads its own top list.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    assert "".join(e.token for e in content) == reply.choices[0].message.content


def test_logit_bias_and_penalties_steer_sampling(cpu_server: RunningServer, tiny_model_dir):
    from transformers import AutoTokenizer

    client = cpu_server.client()
    forced = chat(client, BASE_NAME, temperature=0, max_tokens=4, logit_bias={"28": 100}, logprobs=True,
                  extra_body=FIXED_LENGTH)
    token = AutoTokenizer.from_pretrained(tiny_model_dir).decode([28])
    assert {e.token for e in forced.choices[0].logprobs.content} == {token}
    plain = greedy_text(client, BASE_NAME, tokens=16)
    penalised = chat(client, BASE_NAME, temperature=0, max_tokens=16, frequency_penalty=2.0, presence_penalty=2.0,
                     extra_body=FIXED_LENGTH).choices[0].message.content
    assert penalised != plain


def test_runtime_adapter_load_and_unload(cpu_server: RunningServer, adapter_dirs):
    url = cpu_server.base_url
    client = cpu_server.client()
    load = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "gamma", "lora_path": str(adapter_dirs["beta"])})
    assert (load.status_code, load.text) == (200, "Success: LoRA adapter 'gamma' added successfully.")
    assert "gamma" in {m.id for m in client.models.list()}
    assert chat(client, "gamma", max_tokens=2).choices[0].message.content is not None

    again = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "gamma", "lora_path": str(adapter_dirs["beta"])})
    assert again.status_code == 400 and again.json()["error"]["type"] == "InvalidUserInput"
    missing = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "delta", "lora_path": "/nonexistent"})
    assert missing.status_code == 404 and "No adapter found for /nonexistent" in missing.json()["error"]["message"]
    incomplete = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "delta"})
    assert incomplete.status_code == 400

    unload = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "gamma"})
    assert (unload.status_code, unload.text) == (200, "Success: LoRA adapter 'gamma' removed successfully.")
    assert "gamma" not in {m.id for m in client.models.list()}
    with pytest.raises(openai.NotFoundError):
        chat(client, "gamma", max_tokens=2)
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "gamma"}).status_code == 404


def test_lru_bound_evicts_and_reloads_transparently(cpu_server: RunningServer, adapter_dirs):
    """max_adapters=2: a third adapter evicts the least recently used one from the model,
    which still answers (reloaded from the cache) with the same output as before."""
    url = cpu_server.base_url
    client = cpu_server.client()
    before = greedy_text(client, "alpha")
    for name in ("lru-1", "lru-2"):
        response = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter_dirs["beta"])})
        assert response.status_code == 200
        greedy_text(client, name, tokens=1)
    assert metric(cpu_server, "tuneforge_loaded_adapters") == 2
    assert greedy_text(client, "alpha") == before
    assert metric(cpu_server, "tuneforge_loaded_adapters") == 2
    for name in ("lru-1", "lru-2"):
        httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name})


def test_unknown_model_is_not_found(cpu_server: RunningServer):
    with pytest.raises(openai.NotFoundError) as raised:
        chat(cpu_server.client(), "no-such-model", max_tokens=2)
    assert raised.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 3.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"n": 0}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_tokens": 10**7}, "max_tokens"),
        ({"logit_bias": {"999999999": 1}}, "logit_bias"),
        ({"presence_penalty": -5}, "presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_invalid_parameters_are_bad_requests(cpu_server: RunningServer, kwargs, param):
    with pytest.raises(openai.BadRequestError) as raised:
        chat(cpu_server.client(), BASE_NAME, **kwargs)
    assert raised.value.body["param"] == param


def test_null_parameters_mean_their_defaults(cpu_server: RunningServer):
    """OpenAI documents these as nullable; the openai client omits None, so send JSON nulls."""
    nulls = dict.fromkeys(("frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "stream", "n",
                           "stream_options", "stop", "seed", "temperature", "top_p", "logit_bias", "max_tokens"))
    token = {"Authorization": f"Bearer {cpu_server.token}"} if cpu_server.token else {}
    answer = httpx.post(f"{cpu_server.base_url}/v1/chat/completions", headers=token,
                        json={"model": BASE_NAME, "messages": MESSAGES, "max_completion_tokens": 2, **nulls})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["choices"]) == 1 and answer.json()["choices"][0]["logprobs"] is None


def test_full_queue_answers_429_and_the_client_retries_through(cpu_server: RunningServer):
    url = cpu_server.base_url
    long_request = {"model": BASE_NAME, "messages": MESSAGES, "max_tokens": 120, "ignore_eos": True}
    # One running plus max_queue (2) waiting fills the engine.
    fillers = [threading.Thread(target=httpx.post, args=(f"{url}/v1/chat/completions",),
                                kwargs={"json": long_request, "timeout": 300}) for _ in range(3)]
    for thread in fillers:
        thread.start()
    deadline = time.monotonic() + 60
    while metric(cpu_server, "vllm:num_requests_waiting") < 2:
        assert time.monotonic() < deadline, "the queue never filled"
        time.sleep(0.02)

    refused = httpx.post(f"{url}/v1/chat/completions", json={**long_request, "max_tokens": 1})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "RateLimitError"

    statuses: list[int] = []
    recorder = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    client = cpu_server.client(max_retries=30, http_client=recorder)
    reply = chat(client, BASE_NAME, max_tokens=2)
    assert reply.choices[0].message.content is not None
    assert statuses[0] == 429 and statuses[-1] == 200
    for thread in fillers:
        thread.join()


def test_metrics_count_requests_tokens_and_adapters(cpu_server: RunningServer):
    chat(cpu_server.client(), "alpha", max_tokens=3, extra_body=FIXED_LENGTH)
    text = httpx.get(f"{cpu_server.base_url}/metrics").text
    assert 'tuneforge_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert 'vllm:generation_tokens_total{model_name="alpha"}' in text
    assert 'vllm:e2e_request_latency_seconds_count{model_name="alpha"}' in text
    assert metric(cpu_server, "tuneforge_loaded_adapters") >= 1
