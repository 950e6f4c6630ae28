"""Validation of fine-tuning datasets and batch input files.

The gateway (at upload and create time), the trainer and the batch runner all validate
through this one module, so a file the gateway accepted is never rejected later for a
different reason, and every error carries OpenAI's code, the offending field and a
1-based line number.

Everything here streams: input is any iterable of lines (bytes or str, with or without
their newline), consumed once, so a file of several gigabytes is checked in constant
memory (the batch duplicate check keeps one small digest per request, bounded by the
request limit).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tuneforge.contracts import ErrorInfo

CHAT_ROLES = ("system", "user", "assistant", "tool")
CHAT_COMPLETIONS = "/v1/chat/completions"
DEFAULT_MIN_EXAMPLES = 10
DEFAULT_MAX_REQUESTS = 50_000


class DatasetError(Exception):
    """A file that breaks OpenAI's dataset or batch-file rules, in OpenAI's error shape."""

    def __init__(self, code: str, message: str, *, param: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.line = line

    def to_error_info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, param=self.param, line=self.line)

    def __repr__(self) -> str:
        fields = f"code={self.code!r}, message={self.message!r}, param={self.param!r}, line={self.line!r}"
        return f"DatasetError({fields})"


def _error(code: str, line: int, message: str, param: str | None = None) -> DatasetError:
    return DatasetError(code, f"line {line}: {message}", param=param, line=line)


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; accepting them would let a file through that other
    # readers (and OpenAI) reject.
    raise ValueError(f"{name} is not valid JSON")


def _iter_objects(lines: Iterable[bytes | str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Parses a JSONL stream into (line number, object) pairs.

    Blank lines are allowed only at the very end (a trailing newline, or several): a blank
    line followed by more data is reported, because OpenAI rejects it and a silently
    skipped line would shift every later line number a user sees elsewhere.
    """
    if isinstance(lines, (str, bytes)):
        lines = lines.splitlines()
    pending_blank: int | None = None
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _error(
                    "invalid_json_line", number, f"not valid UTF-8 (byte {exc.start}: {exc.reason})"
                ) from None
        else:
            text = raw.removeprefix("\ufeff") if number == 1 else raw
        text = text.strip()
        if not text:
            if pending_blank is None:
                pending_blank = number
            continue
        if pending_blank is not None:
            raise _error(
                "invalid_json_line",
                pending_blank,
                "blank line inside the file; every line must be one JSON object",
            )
        try:
            value = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            raise _error("invalid_json_line", number, f"not valid JSON ({exc})") from None
        except RecursionError:
            raise _error("invalid_json_line", number, "JSON nested too deeply") from None
        if not isinstance(value, dict):
            raise _error("invalid_json_line", number, f"expected a JSON object, got {_json_type(value)}")
        yield number, value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# -- fine-tuning datasets -----------------------------------------------------------------


@dataclass(frozen=True)
class ChatExample:
    """One training example, normalised so the trainer handles a single shape.

    Every message has `role` and a string `content` (text parts are joined; an assistant
    message that only calls tools has ""), plus `weight` (0/1, assistant only), `name`,
    `tool_calls` and `tool_call_id` where the file gave them. Prompt/completion lines
    become a user and an assistant message.
    """

    line: int
    messages: list[dict]
    tools: list[dict] | None = None


@dataclass(frozen=True)
class FineTuneFileSummary:
    n_examples: int
    format: str
    n_messages: int
    n_trained_messages: int
    n_examples_with_tools: int
    n_characters: int


def _content_text(content: Any, line: int, param: str, *, allow_empty: bool) -> str:
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for index, part in enumerate(content):
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise _error(
                    "invalid_content",
                    line,
                    f'{param}[{index}] must be a text part {{"type": "text", "text": "..."}}',
                    f"{param}[{index}]",
                )
            parts.append(part["text"])
        text = "".join(parts)
    else:
        raise _error(
            "invalid_content",
            line,
            f"{param} must be a string or a list of text parts, got {_json_type(content)}",
            param,
        )
    if not allow_empty and not text.strip():
        raise _error("invalid_content", line, f"{param} is empty", param)
    return text


def _check_tool_calls(tool_calls: Any, line: int, param: str) -> list[dict]:
    if not isinstance(tool_calls, list):
        raise _error("invalid_tool_calls", line, f"{param} must be a list of tool calls", param)
    for index, call in enumerate(tool_calls):
        where = f"{param}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise _error(
                "invalid_tool_calls", line, f"{where} must be an object with a function", f"{where}.function"
            )
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise _error(
                "missing_required_field", line, f"{where}.function.name is missing", f"{where}.function.name"
            )
        if not isinstance(function.get("arguments"), str):
            raise _error(
                "invalid_tool_calls",
                line,
                f"{where}.function.arguments must be a JSON-encoded string",
                f"{where}.function.arguments",
            )
    return tool_calls


def _check_tools(tools: Any, line: int) -> list[dict]:
    if not isinstance(tools, list):
        raise _error(
            "invalid_tools",
            line,
            f"tools must be a list of function definitions, got {_json_type(tools)}",
            "tools",
        )
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            raise _error(
                "invalid_tools", line, f"tools[{index}] must be an object with a function", f"tools[{index}]"
            )
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise _error(
                "missing_required_field",
                line,
                f"tools[{index}].function.name is missing",
                f"tools[{index}].function.name",
            )
    return tools


def _chat_message(message: Any, line: int, index: int) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _error(
            "invalid_role", line, f"{where} must be an object with a role, got {_json_type(message)}", where
        )
    if "role" not in message:
        raise _error("missing_required_field", line, f"{where} has no role", f"{where}.role")
    role = message["role"]
    if role not in CHAT_ROLES:
        raise _error(
            "invalid_role",
            line,
            f"{where}.role {role!r} is not one of {', '.join(CHAT_ROLES)}",
            f"{where}.role",
        )
    out: dict[str, Any] = {"role": role}
    tool_calls = message.get("tool_calls")
    # Exporters often write `"tool_calls": []` on plain turns; that means no calls.
    if tool_calls is not None and tool_calls != []:
        if role != "assistant":
            raise _error(
                "invalid_tool_calls",
                line,
                f"{where} is a {role} message; only assistant messages call tools",
                f"{where}.tool_calls",
            )
        out["tool_calls"] = _check_tool_calls(tool_calls, line, f"{where}.tool_calls")
    content = message.get("content")
    if content is None:
        if "tool_calls" not in out:
            raise _error(
                "missing_required_field", line, f"{where} ({role}) has no content", f"{where}.content"
            )
        out["content"] = ""
    else:
        # A tool may legitimately return nothing; a turn that only calls tools has no text.
        allow_empty = role == "tool" or "tool_calls" in out
        out["content"] = _content_text(content, line, f"{where}.content", allow_empty=allow_empty)
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            raise _error(
                "invalid_weight",
                line,
                f"{where} is a {role} message; weight is allowed on assistant messages only",
                f"{where}.weight",
            )
        if isinstance(weight, bool) or weight not in (0, 1):
            raise _error(
                "invalid_weight", line, f"{where}.weight must be 0 or 1, got {weight!r}", f"{where}.weight"
            )
        out["weight"] = int(weight)
    if "name" in message:
        if not isinstance(message["name"], str):
            raise _error("invalid_content", line, f"{where}.name must be a string", f"{where}.name")
        out["name"] = message["name"]
    if "tool_call_id" in message:
        if role != "tool" or not isinstance(message["tool_call_id"], str):
            raise _error(
                "invalid_tool_calls",
                line,
                f"{where}.tool_call_id must be a string on a tool message",
                f"{where}.tool_call_id",
            )
        out["tool_call_id"] = message["tool_call_id"]
    return out


def _chat_example(obj: dict[str, Any], line: int) -> ChatExample:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise _error(
            "missing_required_field", line, "messages must be a non-empty list of messages", "messages"
        )
    normalised = [_chat_message(message, line, index) for index, message in enumerate(messages)]
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in normalised):
        raise _error(
            "missing_assistant_message",
            line,
            "no assistant message to train on (every example needs one with weight 1 or no weight)",
            "messages",
        )
    tools = _check_tools(obj["tools"], line) if obj.get("tools") is not None else None
    return ChatExample(line=line, messages=normalised, tools=tools)


def _prompt_completion_example(obj: dict[str, Any], line: int) -> ChatExample:
    for field in ("prompt", "completion"):
        if field not in obj:
            raise _error("missing_required_field", line, f"{field} is missing", field)
    # Legacy datasets often had empty prompts (unconditional generation); an empty
    # completion has nothing to learn.
    prompt = _content_text(obj["prompt"], line, "prompt", allow_empty=True)
    completion = _content_text(obj["completion"], line, "completion", allow_empty=False)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return ChatExample(line=line, messages=messages)


def _example_format(obj: dict[str, Any]) -> str | None:
    if "messages" in obj:
        return "chat"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    return None


def _iter_examples(lines: Iterable[bytes | str]) -> Iterator[tuple[str, ChatExample]]:
    """(format, example) pairs; the first example fixes the file's format.

    A later line in the other format is reported as missing that format's field, since a
    mixed file is almost always two datasets concatenated by mistake.
    """
    file_format: str | None = None
    first_line = 0
    for line, obj in _iter_objects(lines):
        line_format = _example_format(obj)
        if line_format is None:
            if file_format == "prompt_completion":
                raise _error("missing_required_field", line, "prompt is missing", "prompt")
            raise _error(
                "missing_required_field",
                line,
                'messages is missing (expected {"messages": [...]})',
                "messages",
            )
        if file_format is None:
            file_format, first_line = line_format, line
        elif line_format != file_format:
            field = "messages" if file_format == "chat" else "prompt"
            raise _error(
                "missing_required_field",
                line,
                f"{field} is missing: this line is in the {line_format} format but line {first_line} "
                f"set the file's format to {file_format}",
                field,
            )
        if line_format == "chat":
            yield line_format, _chat_example(obj, line)
        else:
            yield line_format, _prompt_completion_example(obj, line)


def iter_fine_tune_examples(lines: Iterable[bytes | str]) -> Iterator[ChatExample]:
    """Yields each example as soon as its line is valid; raises on the first bad line."""
    for _, example in _iter_examples(lines):
        yield example


def validate_fine_tune_file(
    lines: Iterable[bytes | str], *, min_examples: int = DEFAULT_MIN_EXAMPLES
) -> FineTuneFileSummary:
    """Checks a whole training or validation file in one streaming pass."""
    n_examples = n_messages = n_trained = n_tools = n_chars = 0
    file_format = ""
    for file_format, example in _iter_examples(lines):
        n_examples += 1
        n_messages += len(example.messages)
        n_trained += sum(1 for m in example.messages if m["role"] == "assistant" and m.get("weight", 1) == 1)
        n_tools += example.tools is not None
        n_chars += sum(len(m["content"]) for m in example.messages)
    if not n_examples:
        raise DatasetError("empty_file", "the file contains no examples")
    if n_examples < min_examples:
        raise DatasetError(
            "invalid_n_examples",
            f"the file has {n_examples} example{'s' if n_examples != 1 else ''}, "
            f"but must have at least {min_examples}",
        )
    return FineTuneFileSummary(
        n_examples=n_examples,
        format=file_format,
        n_messages=n_messages,
        n_trained_messages=n_trained,
        n_examples_with_tools=n_tools,
        n_characters=n_chars,
    )


# -- batch input files --------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRequest:
    line: int
    custom_id: str
    method: str
    url: str
    body: dict


@dataclass(frozen=True)
class BatchFileSummary:
    n_requests: int
    models: frozenset[str]


def _batch_request(obj: dict[str, Any], line: int, endpoint: str) -> BatchRequest:
    for field in ("custom_id", "method", "url", "body"):
        if field not in obj:
            raise _error("missing_required_field", line, f"{field} is missing", field)
    custom_id = obj["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        raise _error("missing_required_field", line, "custom_id must be a non-empty string", "custom_id")
    if obj["method"] != "POST":
        raise _error("invalid_method", line, f"method must be POST, got {obj['method']!r}", "method")
    if obj["url"] != endpoint:
        raise _error(
            "invalid_url", line, f"url {obj['url']!r} does not match the batch endpoint {endpoint}", "url"
        )
    body = obj["body"]
    if not isinstance(body, dict):
        raise _error("invalid_body", line, f"body must be a JSON object, got {_json_type(body)}", "body")
    if "model" not in body:
        raise _error("missing_model", line, "body.model is missing", "body.model")
    if not isinstance(body["model"], str) or not body["model"]:
        raise _error("missing_model", line, "body.model must be a non-empty string", "body.model")
    if endpoint == CHAT_COMPLETIONS:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _error(
                "invalid_body", line, "body.messages must be a non-empty list of messages", "body.messages"
            )
    return BatchRequest(line=line, custom_id=custom_id, method="POST", url=endpoint, body=body)


def iter_batch_requests(
    lines: Iterable[bytes | str], *, endpoint: str = CHAT_COMPLETIONS
) -> Iterator[BatchRequest]:
    """Yields each request as soon as its line is valid; raises on the first bad line.

    Checks that need the whole file (duplicates, the request limit, served models) live in
    `validate_batch_file`, so the runner can re-read an already validated file cheaply.
    """
    for line, obj in _iter_objects(lines):
        yield _batch_request(obj, line, endpoint)


def validate_batch_file(
    lines: Iterable[bytes | str],
    *,
    endpoint: str = CHAT_COMPLETIONS,
    served_models: Collection[str] | None = None,
    max_requests: int = DEFAULT_MAX_REQUESTS,
) -> BatchFileSummary:
    """Checks a whole batch input file in one streaming pass.

    Duplicates are found through a 16-byte digest per custom_id (custom ids can be long;
    the digest keeps 50,000 of them to a few MB).
    """
    served = None if served_models is None else frozenset(served_models)
    seen: dict[bytes, int] = {}
    models: set[str] = set()
    n_requests = 0
    for request in iter_batch_requests(lines, endpoint=endpoint):
        n_requests += 1
        if n_requests > max_requests:
            raise _error(
                "too_many_tasks",
                request.line,
                f"the file has more than {max_requests} requests, the limit per batch",
            )
        digest = hashlib.blake2b(request.custom_id.encode(), digest_size=16).digest()
        first = seen.setdefault(digest, request.line)
        if first != request.line:
            raise _error(
                "duplicate_custom_id",
                request.line,
                f"custom_id {request.custom_id!r} was already used on line {first}",
                "custom_id",
            )
        model = request.body["model"]
        if served is not None and model not in served:
            available = ", ".join(sorted(served)) or "none"
            raise _error(
                "model_not_found",
                request.line,
                f"model {model!r} is not served by the target (available: {available})",
                "body.model",
            )
        models.add(model)
    if not n_requests:
        raise DatasetError("empty_file", "the file contains no requests")
    return BatchFileSummary(n_requests=n_requests, models=frozenset(models))


def validate_file(purpose: str, lines: Iterable[bytes | str]) -> FineTuneFileSummary | BatchFileSummary:
    """Validates an uploaded file by its OpenAI purpose ("fine-tune" or "batch")."""
    if purpose == "fine-tune":
        return validate_fine_tune_file(lines)
    if purpose == "batch":
        return validate_batch_file(lines)
    raise ValueError(f"files with purpose {purpose!r} have no content rules to validate")
