"""Dataset and batch-file validation: OpenAI's codes, the right line and field, streaming."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from tuneforge.datasets import (
    BatchFileSummary,
    ChatExample,
    DatasetError,
    FineTuneFileSummary,
    iter_batch_requests,
    iter_fine_tune_examples,
    validate_batch_file,
    validate_file,
    validate_fine_tune_file,
)


def chat(user: str = "Hi", assistant: str = "Hello!", **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        **extra,
    }


def request(custom_id: str, model: str = "smollm2", **overrides) -> dict:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": "Say hi"}]},
    }
    line.update(overrides)
    return line


def jsonl(objects: list) -> list[bytes]:
    return [(o if isinstance(o, str) else json.dumps(o)).encode() + b"\n" for o in objects]


def raises(call, *args, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        call(*args, **kwargs)
    return info.value


def assert_error(error: DatasetError, code: str, line: int | None, param: str | None = None) -> None:
    assert (error.code, error.line, error.param) == (code, line, param), repr(error)
    if line is not None:
        assert error.message.startswith(f"line {line}: ")
    info = error.to_error_info()
    assert (info.code, info.message, info.param, info.line) == (code, error.message, param, line)


# -- fine-tuning files --------------------------------------------------------------------


def test_valid_chat_file_is_normalised_and_summarised():
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Two "}, {"type": "text", "text": "parts"}],
                },
                {"role": "assistant", "content": "Draft", "weight": 0, "tool_calls": []},
                {"role": "user", "content": "Again", "name": "bob"},
                {"role": "assistant", "content": "Final", "weight": 1},
            ],
            "unknown_top_level_key": True,
        }
    ] + [chat(f"q{i}", f"a{i}") for i in range(9)]
    summary = validate_fine_tune_file(jsonl(rows))
    assert summary == FineTuneFileSummary(
        n_examples=10,
        format="chat",
        n_messages=5 + 18,
        n_trained_messages=1 + 9,
        n_examples_with_tools=0,
        n_characters=len("Be brief.Two partsDraftAgainFinal") + sum(len(f"q{i}a{i}") for i in range(9)),
    )
    first = next(iter_fine_tune_examples(jsonl(rows)))
    assert first == ChatExample(
        line=1,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Two parts"},
            {"role": "assistant", "content": "Draft", "weight": 0},
            {"role": "user", "content": "Again", "name": "bob"},
            {"role": "assistant", "content": "Final", "weight": 1},
        ],
    )


def test_tool_calling_examples_keep_tools_and_calls():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": ""},
            {"role": "assistant", "content": "No data."},
        ],
        "tools": tools,
    }
    [example] = iter_fine_tune_examples(jsonl([row]))
    assert example.tools == tools
    assert example.messages[1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert example.messages[2] == {"role": "tool", "content": "", "tool_call_id": "call_1"}
    summary = validate_fine_tune_file(jsonl([row] * 10))
    assert summary.n_examples_with_tools == 10


def test_prompt_completion_file_becomes_user_assistant_turns():
    rows = [{"prompt": f"2+{i}=", "completion": str(2 + i)} for i in range(10)] + [
        {"prompt": "", "completion": "x"}
    ]
    summary = validate_fine_tune_file(jsonl(rows))
    assert (summary.n_examples, summary.format, summary.n_trained_messages) == (11, "prompt_completion", 11)
    example = next(iter_fine_tune_examples(jsonl(rows)))
    assert example == ChatExample(
        line=1, messages=[{"role": "user", "content": "2+0="}, {"role": "assistant", "content": "2"}]
    )


def test_str_lines_crlf_bom_and_trailing_blank_lines_are_accepted():
    lines = ["\ufeff" + json.dumps(chat()) + "\r\n"] + [json.dumps(chat()) + "\r\n"] * 9 + ["\n", "   \n"]
    assert validate_fine_tune_file(lines).n_examples == 10
    text = "\n".join(json.dumps(chat()) for _ in range(10)) + "\n"
    assert validate_fine_tune_file(text).n_examples == 10
    assert validate_fine_tune_file(text.encode()).n_examples == 10


def test_input_is_consumed_once_as_a_stream():
    consumed = []

    def lines():
        for i in range(1, 13):
            consumed.append(i)
            yield json.dumps(chat(f"q{i}")).encode()

    stream = iter_fine_tune_examples(lines())
    first = next(stream)
    assert first.line == 1 and consumed == [1], "examples must come out as their lines are read"
    assert validate_fine_tune_file(lines()).n_examples == 12


def test_error_stops_at_the_first_bad_line_without_reading_on():
    read = []

    def lines():
        for i in range(1, 100):
            read.append(i)
            yield json.dumps(chat() if i != 3 else {"messages": []})

    assert_error(raises(validate_fine_tune_file, lines()), "missing_required_field", 3, "messages")
    assert read == [1, 2, 3]


FINE_TUNE_CASES = {
    "invalid_json_line": ('{"messages": [', "invalid_json_line", None),
    "not_an_object": ("[1, 2]", "invalid_json_line", None),
    "nan": ('{"messages": NaN}', "invalid_json_line", None),
    "deeply_nested": ('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid_json_line", None),
    "no_messages": ({"conversation": []}, "missing_required_field", "messages"),
    "messages_not_a_list": ({"messages": "hello"}, "missing_required_field", "messages"),
    "no_role": (
        {"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]},
        "missing_required_field",
        "messages[0].role",
    ),
    "unknown_role": (
        {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        "invalid_role",
        "messages[0].role",
    ),
    "message_not_an_object": (
        {"messages": ["hi", {"role": "assistant", "content": "x"}]},
        "invalid_role",
        "messages[0]",
    ),
    "no_assistant": (
        {"messages": [{"role": "user", "content": "hi"}]},
        "missing_assistant_message",
        "messages",
    ),
    "only_weight_0_assistant": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}]},
        "missing_assistant_message",
        "messages",
    ),
    "weight_2": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 2}]},
        "invalid_weight",
        "messages[1].weight",
    ),
    "weight_true": (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "x", "weight": True},
            ]
        },
        "invalid_weight",
        "messages[1].weight",
    ),
    "weight_on_user": (
        {"messages": [{"role": "user", "content": "hi", "weight": 1}, {"role": "assistant", "content": "x"}]},
        "invalid_weight",
        "messages[0].weight",
    ),
    "content_number": (
        {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]},
        "invalid_content",
        "messages[0].content",
    ),
    "content_image_part": (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": "x"},
            ]
        },
        "invalid_content",
        "messages[0].content[0]",
    ),
    "empty_assistant": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
        "invalid_content",
        "messages[1].content",
    ),
    "missing_content": (
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
        "missing_required_field",
        "messages[0].content",
    ),
    "tool_call_without_name": (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"arguments": "{}"}}],
                },
            ]
        },
        "missing_required_field",
        "messages[1].tool_calls[0].function.name",
    ),
    "tool_call_arguments_object": (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
            ]
        },
        "invalid_tool_calls",
        "messages[1].tool_calls[0].function.arguments",
    ),
    "tool_calls_on_user": (
        {
            "messages": [
                {"role": "user", "content": "hi", "tool_calls": [{}]},
                {"role": "assistant", "content": "x"},
            ]
        },
        "invalid_tool_calls",
        "messages[0].tool_calls",
    ),
    "tool_call_id_on_assistant": (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "x", "tool_call_id": "c"},
            ]
        },
        "invalid_tool_calls",
        "messages[1].tool_call_id",
    ),
    "name_not_a_string": (
        {"messages": [{"role": "user", "content": "hi", "name": 3}, {"role": "assistant", "content": "x"}]},
        "invalid_content",
        "messages[0].name",
    ),
    "tools_not_a_list": (chat(tools={"name": "f"}), "invalid_tools", "tools"),
    "tool_without_name": (
        chat(tools=[{"type": "function", "function": {}}]),
        "missing_required_field",
        "tools[0].function.name",
    ),
    "prompt_without_completion": ({"prompt": "hi"}, "missing_required_field", "completion"),
    "empty_completion": ({"prompt": "hi", "completion": ""}, "invalid_content", "completion"),
}


@pytest.mark.parametrize("case", sorted(FINE_TUNE_CASES))
def test_each_fine_tune_error_names_code_line_and_field(case):
    bad, code, param = FINE_TUNE_CASES[case]
    legacy = isinstance(bad, dict) and "prompt" in bad
    rows = [{"prompt": "p", "completion": "c"} if legacy else chat() for _ in range(11)]
    rows[6] = bad
    assert_error(raises(validate_fine_tune_file, jsonl(rows)), code, 7, param)
    with pytest.raises(DatasetError):
        list(iter_fine_tune_examples(jsonl(rows)))


def test_mixed_formats_are_rejected_at_the_first_odd_line():
    rows = [chat()] * 3 + [{"prompt": "a", "completion": "b"}] + [chat()] * 8
    error = raises(validate_fine_tune_file, jsonl(rows))
    assert_error(error, "missing_required_field", 4, "messages")
    assert "line 1" in error.message
    rows = [{"prompt": "a", "completion": "b"}] * 2 + [chat()]
    assert_error(raises(validate_fine_tune_file, jsonl(rows)), "missing_required_field", 3, "prompt")


def test_blank_line_in_the_middle_is_an_invalid_json_line():
    lines = jsonl([chat()] * 4) + [b"\n", b"\n"] + jsonl([chat()] * 6)
    assert_error(raises(validate_fine_tune_file, lines), "invalid_json_line", 5)


def test_non_utf8_bytes_are_an_invalid_json_line():
    lines = jsonl([chat()] * 2) + ['{"messages": "caf\xe9"}\n'.encode("latin-1")] + jsonl([chat()] * 8)
    error = raises(validate_fine_tune_file, lines)
    assert_error(error, "invalid_json_line", 3)
    assert "UTF-8" in error.message


def test_too_few_examples_and_empty_file():
    error = raises(validate_fine_tune_file, jsonl([chat()] * 9))
    assert_error(error, "invalid_n_examples", None)
    assert "9 examples" in error.message and "10" in error.message
    assert validate_fine_tune_file(jsonl([chat()] * 2), min_examples=1).n_examples == 2
    assert_error(raises(validate_fine_tune_file, []), "empty_file", None)
    assert_error(raises(validate_fine_tune_file, [b"\n", b"  \n"]), "empty_file", None)


# -- batch files --------------------------------------------------------------------------


def test_valid_batch_file():
    rows = [request(f"r{i}", model="a" if i % 2 else "b") for i in range(5)]
    assert validate_batch_file(jsonl(rows), served_models=["a", "b", "c"]) == BatchFileSummary(
        n_requests=5, models=frozenset({"a", "b"})
    )
    requests = list(iter_batch_requests(jsonl(rows)))
    assert [(r.line, r.custom_id, r.method, r.url) for r in requests][:2] == [
        (1, "r0", "POST", "/v1/chat/completions"),
        (2, "r1", "POST", "/v1/chat/completions"),
    ]
    assert requests[0].body == rows[0]["body"]


def test_batch_model_check_is_skipped_without_served_models():
    assert validate_batch_file(jsonl([request("r", model="anything")])).models == {"anything"}


def test_batch_requests_stream_one_line_at_a_time():
    consumed = []

    def lines():
        for i in range(1, 5):
            consumed.append(i)
            yield json.dumps(request(f"r{i}"))

    stream = iter_batch_requests(lines())
    assert next(stream).line == 1 and consumed == [1]


BATCH_CASES = {
    "invalid_json_line": ('{"custom_id": "r3", ', "invalid_json_line", None),
    "no_custom_id": (
        {k: v for k, v in request("x").items() if k != "custom_id"},
        "missing_required_field",
        "custom_id",
    ),
    "custom_id_number": (request(3), "missing_required_field", "custom_id"),
    "no_method": (
        {k: v for k, v in request("r3").items() if k != "method"},
        "missing_required_field",
        "method",
    ),
    "no_url": ({k: v for k, v in request("r3").items() if k != "url"}, "missing_required_field", "url"),
    "no_body": ({k: v for k, v in request("r3").items() if k != "body"}, "missing_required_field", "body"),
    "get": (request("r3", method="GET"), "invalid_method", "method"),
    "wrong_url": (request("r3", url="/v1/embeddings"), "invalid_url", "url"),
    "body_string": (request("r3", body="hello"), "invalid_body", "body"),
    "body_without_messages": (request("r3", body={"model": "smollm2"}), "invalid_body", "body.messages"),
    "body_without_model": (
        request("r3", body={"messages": [{"role": "user", "content": "x"}]}),
        "missing_model",
        "body.model",
    ),
    "duplicate": (request("r1"), "duplicate_custom_id", "custom_id"),
    "unserved_model": (request("r3", model="gpt-4o"), "model_not_found", "body.model"),
}


@pytest.mark.parametrize("case", sorted(BATCH_CASES))
def test_each_batch_error_names_code_line_and_field(case):
    bad, code, param = BATCH_CASES[case]
    rows = [request(f"r{i}") for i in range(1, 6)]
    rows[2] = bad
    error = raises(validate_batch_file, jsonl(rows), served_models={"smollm2"})
    assert_error(error, code, 3, param)
    if code == "duplicate_custom_id":
        assert "'r1'" in error.message and "line 1" in error.message


def test_batch_blank_line_non_utf8_and_empty():
    lines = jsonl([request("a")]) + [b"\n"] + jsonl([request("b")])
    assert_error(raises(validate_batch_file, lines), "invalid_json_line", 2)
    lines = jsonl([request("a")]) + [b'{"custom_id": "\xff"}\n']
    assert_error(raises(validate_batch_file, lines), "invalid_json_line", 2)
    assert_error(raises(validate_batch_file, []), "empty_file", None)
    assert validate_batch_file(jsonl([request("a")]) + [b"\n"]).n_requests == 1


def test_too_many_tasks_is_reported_on_the_first_line_over_the_limit():
    rows = (json.dumps(request(f"r{i}")) for i in range(1, 8))
    assert_error(raises(validate_batch_file, rows, max_requests=5), "too_many_tasks", 6)


def test_duplicate_check_over_a_large_file_stays_small():
    """50,000 custom ids of 500+ characters (25 MB of ids alone): only digests are kept."""
    template = json.dumps(request("ID"))
    padding = "x" * 500

    def lines(duplicate_at: int | None = None):
        for i in range(1, 50_001):
            yield template.replace('"ID"', f'"{padding}-{1 if i == duplicate_at else i}"', 1)

    tracemalloc.start()
    try:
        assert validate_batch_file(lines()).n_requests == 50_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert_error(
        raises(validate_batch_file, lines(duplicate_at=49_999)), "duplicate_custom_id", 49_999, "custom_id"
    )


def test_validate_file_dispatches_on_purpose():
    assert isinstance(validate_file("fine-tune", jsonl([chat()] * 10)), FineTuneFileSummary)
    assert isinstance(validate_file("batch", jsonl([request("a")])), BatchFileSummary)
    assert_error(
        raises(validate_file, "batch", jsonl([request("a", method="PUT")])), "invalid_method", 1, "method"
    )
    with pytest.raises(ValueError):
        validate_file("assistants", [])
