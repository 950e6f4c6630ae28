"""The chat proxy's pure parts: which requests reach an engine, and how an engine's error
reaches the client."""

from __future__ import annotations

import json
from http import HTTPStatus

import pytest

from tuneforge.gateway.chat import parse_request, upstream_error
from tuneforge.gateway.errors import OpenAIError

from tuneforge_inference.cpu.errors import APIError, model_not_found
from tuneforge_inference.cpu.protocol import ChatCompletionRequest as CpuEngineRequest
from tuneforge_inference.cpu.protocol import parse_request as cpu_engine_parse

MESSAGES = [{"role": "user", "content": "hi"}]
NULLABLE = ("frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_completion_tokens", "max_tokens", "n",
            "presence_penalty", "seed", "stop", "stream", "stream_options", "temperature", "top_p")
"""Every parameter the reference (and OpenAI) documents as nullable."""


def _body(**parameters) -> bytes:
    return json.dumps({"model": "m", "messages": MESSAGES, **parameters}).encode()


def _refusal(raw: bytes) -> tuple[str | None, str | None]:
    with pytest.raises(OpenAIError) as exc:
        parse_request(raw)
    assert (exc.value.status, exc.value.type) == (400, "invalid_request_error")
    return exc.value.param, exc.value.code


def test_null_means_the_default_for_every_nullable_parameter() -> None:
    request = parse_request(_body(**dict.fromkeys(NULLABLE)))
    assert all(getattr(request, name) is None for name in NULLABLE)
    assert (request.model, request.stream) == ("m", None)


def test_documented_values_and_engine_extras_pass() -> None:
    request = parse_request(_body(
        frequency_penalty=-2, presence_penalty=2.0, logit_bias={"50256": -100, "13": 100.0}, logprobs=True,
        top_logprobs=20, max_completion_tokens=5, n=2, seed=-(2**63), stop=["a", "b", "c", "d"], stream=True,
        stream_options={"include_usage": True}, temperature=0, top_p=1, tools=[], ignore_eos=True))
    assert request.stop == ["a", "b", "c", "d"] and request.stream is True
    assert request.model_extra == {"tools": [], "ignore_eos": True}
    assert parse_request(_body(stop="END")).stop == "END"


@pytest.mark.parametrize(("parameters", "param", "says"), [
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 sequences, not 5"),
    ({"stop": 5}, "stop", "valid string"),
    ({"frequency_penalty": 2.5}, "frequency_penalty", "less than or equal to 2"),
    ({"presence_penalty": -3}, "presence_penalty", "greater than or equal to -2"),
    ({"temperature": 2.01}, "temperature", "less than or equal to 2"),
    ({"temperature": "0.7"}, "temperature", "valid number"),
    ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "less than or equal to 20"),
    ({"top_logprobs": 2}, "top_logprobs", "requires logprobs to be true"),
    ({"top_logprobs": 2, "logprobs": False}, "top_logprobs", "requires logprobs to be true"),
    ({"logprobs": "yes"}, "logprobs", "valid boolean"),
    ({"stream": 1}, "stream", "valid boolean"),
    ({"logit_bias": {"13": 101}}, "logit_bias", "logit_bias.13: Input should be less than or equal to 100"),
    ({"logit_bias": {"hello": 1}}, "logit_bias", "logit_bias.hello: String should match pattern"),
    ({"n": 0}, "n", "greater than or equal to 1"),
    ({"n": 1.0}, "n", "valid integer"),
    ({"seed": 2**63}, "seed", "less than or equal to"),
    ({"max_completion_tokens": "5"}, "max_completion_tokens", "valid integer"),
    ({"messages": []}, "messages", "at least 1 item"),
    ({"messages": ["hi"]}, "messages", "messages.0: Input should be a valid dictionary"),
    ({"model": ""}, "model", "at least 1 character"),
])
def test_parameters_outside_the_documented_range_are_400_naming_them(parameters, param, says) -> None:
    with pytest.raises(OpenAIError) as exc:
        parse_request(_body(**parameters))
    assert (exc.value.status, exc.value.type, exc.value.code, exc.value.param) == (
        400, "invalid_request_error", "invalid_value", param)
    assert says in exc.value.message


def test_bodies_that_are_no_chat_request() -> None:
    assert _refusal(b"{not json") == (None, "invalid_json")
    assert _refusal(b"[1]") == (None, "invalid_json")
    assert _refusal(json.dumps({"messages": MESSAGES}).encode()) == ("model", "missing_required_parameter")
    assert _refusal(json.dumps({"model": "m"}).encode()) == ("messages", "missing_required_parameter")


def test_the_cpu_engine_takes_what_the_gateway_takes() -> None:
    """The gateway forwards nulls as sent: the CPU engine must read them as defaults."""
    request = cpu_engine_parse(CpuEngineRequest, json.loads(_body(**dict.fromkeys(NULLABLE))))
    assert (request.temperature, request.presence_penalty, request.n, request.stop, request.logprobs) == (
        None, 0.0, 1, [], False)


# -- engine errors -------------------------------------------------------------------------

VLLM_VALIDATION_400 = json.dumps({"error": {
    "message": "1 validation error:\n  {'type': 'too_long', 'loc': 'body.stop', 'msg': 'List should have at most 4 "
               "items after validation, not 5'}", "type": "Bad Request", "param": "body.stop", "code": 400}}).encode()
"""vLLM 0.33's answer to a body its request model refuses (exception_handling/handlers/
validation.py): the HTTP phrase as `type`, the body location as `param`."""


def _vllm(message: str, err_type: str, status: int, param: str | None = None) -> bytes:
    """vLLM 0.33's ErrorResponse as create_error_response (exception_handling/error_response.py)
    builds it: an exception name as `type`, the status as an integer `code`."""
    return json.dumps({"error": {"message": message, "type": err_type, "param": param, "code": status}}).encode()


def _cpu_engine(error: APIError) -> tuple[int, bytes]:
    return int(error.status), json.dumps(error.body()).encode()


@pytest.mark.parametrize(("status", "body", "expected"), [
    (400, VLLM_VALIDATION_400, (400, "invalid_request_error", "invalid_request", "stop")),
    (400, _vllm("temperature must be in [0, 2], got 3.0.", "BadRequestError", 400, "temperature"),
     (400, "invalid_request_error", "invalid_request", "temperature")),
    (404, _vllm("The model `ft:x` does not exist.", "NotFoundError", 404, "model"),
     (404, "invalid_request_error", "model_not_found", "model")),
    (422, _vllm("cannot process", "UnprocessableEntityError", 422), (422, "invalid_request_error", "invalid_request", None)),
    (429, _vllm("busy", "RateLimitError", 429), (429, "rate_limit_error", "rate_limit_exceeded", None)),
    (503, _vllm("retry later", "ServiceUnavailableError", 503), (503, "server_error", "engine_overloaded", None)),
    (501, _vllm("not supported", "NotImplementedError", 501), (400, "invalid_request_error", "unsupported_by_engine", None)),
    (500, _vllm("boom", "InternalServerError", 500), (502, "server_error", "upstream_error", None)),
    (401, b'{"error": "Unauthorized"}', (502, "server_error", "upstream_unauthorized", None)),
    (403, _vllm("forbidden", "Forbidden", 403), (502, "server_error", "upstream_unauthorized", None)),
    (400, b'{"error": {"message": "bad", "type": "BadRequestError", "param": "n", "code": "x"}}',
     (400, "invalid_request_error", "x", "n")),
    (404, b'{"detail": "Not Found"}', (404, "invalid_request_error", "model_not_found", None)),
    (418, b"teapot", (400, "invalid_request_error", "upstream_rejected", None)),
    (502, b"", (502, "server_error", "upstream_error", None)),
])
def test_vllm_errors_get_openais_type_and_a_string_code(status: int, body: bytes, expected: tuple) -> None:
    error = upstream_error(status, body)
    assert (error.status, error.type, error.code, error.param) == expected
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def _cpu_engine_refusal(body: dict) -> APIError:
    with pytest.raises(APIError) as exc:
        cpu_engine_parse(CpuEngineRequest, body)
    return exc.value


@pytest.mark.parametrize(("engine_error", "expected"), [
    (_cpu_engine_refusal({"model": "m", "messages": MESSAGES, "presence_penalty": -5}),
     (400, "invalid_request_error", "invalid_request", "presence_penalty")),
    (model_not_found("ft:x"), (404, "invalid_request_error", "model_not_found", "model")),
    (APIError(HTTPStatus.TOO_MANY_REQUESTS, "The server is busy.", err_type="RateLimitError"),
     (429, "rate_limit_error", "rate_limit_exceeded", None)),
    (APIError(HTTPStatus.BAD_REQUEST, "too long", err_type="InvalidUserInput"),
     (400, "invalid_request_error", "invalid_request", None)),
    (APIError(HTTPStatus.INTERNAL_SERVER_ERROR, "RuntimeError: boom"), (502, "server_error", "upstream_error", None)),
])
def test_cpu_engine_errors_get_openais_type_and_a_string_code(engine_error: APIError, expected: tuple) -> None:
    status, body = _cpu_engine(engine_error)
    error = upstream_error(status, body)
    assert (error.status, error.type, error.code, error.param) == expected
    assert engine_error.message in error.message


def test_the_engines_message_is_kept() -> None:
    assert upstream_error(400, VLLM_VALIDATION_400).message.startswith("1 validation error:")
    assert "Unauthorized" in upstream_error(401, b'{"error": "Unauthorized"}').message
