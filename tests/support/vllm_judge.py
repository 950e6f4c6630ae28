"""vLLM's verdict on what tuneforge hands it: `vllm serve` command lines and the bodies of
runtime adapter loads and unloads. Runs where vLLM is importable (see
`tests.support.vllm_code.run_with_vllm`); reads one JSON request on stdin and prints one
JSON line:

    in:  {"serve_argvs": [argv, ...], "report": [namespace attribute, ...],
          "load_requests": [{"body": {...}, "content_type": str}, ...], "unload_requests": [...],
          "chat_requests": [{...}, ...]}
    out: {"lora_ranks": [...], "serve_argvs": [verdict, ...], "load_requests": [...], "unload_requests": [...],
          "chat_requests": [...], "error_bodies": {name: [status, body]}}

where a verdict is {"ok": true, ...} or {"ok": false, "error": "<vLLM's message>"}; an
argv's adds `values` (the reported attributes), `lora_config` and `middlewares`
({import path: "class" | "function"}).

How far an argv gets: steps 1-3 run vLLM's code as `vllm serve` does, step 4 mirrors it.
1. the `vllm` parser with the `serve` subparser that `ServeSubcommand.subparser_init` builds,
   assembled as vllm/entrypoints/cli/main.py does, parsing `serve` and everything after
   `vllm serve` (model path as the `model_tag` positional): FlexibleArgumentParser's
   rewriting, every flag's type and choices (--max-lora-rank's allowed ranks),
   LoRAParserAction for --lora-modules;
2. `ServeSubcommand.validate` (validate_parsed_serve_args);
3. the first step of `ServeSubcommand.cmd` (model_tag becomes model), then
   `AsyncEngineArgs.from_cli_args`, whose __post_init__ builds the nested configs and
   resolves --quantization shorthands;
4. the `LoRAConfig` that `EngineArgs.create_engine_config` builds from those engine args
   (vllm/engine/arg_utils.py lines 2691-2710 in 0.33.0, mirrored argument for argument):
   its validator checks --max-cpu-loras >= --max-loras;
5. each `--middleware` resolved as `init_entrypoints_middleware`
   (vllm/entrypoints/serve/middleware/register.py) does when it builds the app: the
   module imported, the attribute looked up, and kept only if a class (`"class"`, added
   with `app.add_middleware`) or a coroutine function (`"function"`); the verdict lists
   what each became. Constructing the app is tests.support.vllm_app_probe's part.
It stops before `create_engine_config` itself: that reads the model's config.json into a
ModelConfig first, and then sizes parallelism and memory against the devices, which
needs the model files and GPUs only the serving Pod has.

A load or unload body gets what vLLM's route does before its handler: the content type
check (`validate_json_request`) and validation into `LoadLoRAAdapterRequest` /
`UnloadLoRAAdapterRequest` (vllm/entrypoints/serve/lora/protocol.py). Those models ignore
unknown keys, so each verdict lists the keys vLLM dropped: a misspelt optional field would
otherwise pass unnoticed.

A chat completion body (what the gateway forwards untouched) gets validation into vLLM's
`ChatCompletionRequest` and its `to_sampling_params` with no server defaults, the
SamplingParams checks included; the verdict reports the sampling values it came to. The
error bodies are vLLM's own answers to a body its request model refuses
(`validation_exception_handler`) and to the exceptions its handlers raise
(`create_error_response`), for the gateway to map.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import importlib
import inspect
import io
import json
import sys
import typing
from types import SimpleNamespace
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import Request
from vllm.config.lora import LoRAConfig, MaxLoRARanks
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.exception_handling.handlers.validation import validation_exception_handler
from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from vllm.entrypoints.serve.utils.api_utils import validate_json_request
from vllm.exceptions import (
    GenerationError,
    QueueOverflowError,
    RetryableRequestError,
    VLLMNotFoundError,
    VLLMUnprocessableEntityError,
    VLLMValidationError,
)
from vllm.utils.argparse_utils import FlexibleArgumentParser


def serve_parser() -> tuple[FlexibleArgumentParser, ServeSubcommand]:
    """The parser `vllm` builds, restricted to its `serve` subcommand (prog is what the
    `vllm` console script's argv[0] gives, so messages read as in the Pod's log)."""
    parser = FlexibleArgumentParser(prog="vllm", description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    serve = ServeSubcommand()
    serve.subparser_init(subparsers).set_defaults(dispatch_function=serve.cmd)
    return parser, serve


def lora_config_of(engine_args: AsyncEngineArgs) -> LoRAConfig | None:
    if not engine_args.enable_lora:
        return None
    return LoRAConfig(
        max_lora_rank=engine_args.max_lora_rank,
        max_loras=engine_args.max_loras,
        default_mm_loras=engine_args.default_mm_loras,
        fully_sharded_loras=engine_args.fully_sharded_loras,
        lora_dtype=engine_args.lora_dtype,
        target_modules=engine_args.lora_target_modules,
        enable_tower_connector_lora=engine_args.enable_tower_connector_lora,
        specialize_active_lora=engine_args.specialize_active_lora,
        enable_mixed_moe_lora_format=engine_args.enable_mixed_moe_lora_format,
        enable_moe_shared_loras=engine_args.enable_moe_shared_loras,
        max_lora_cls_labels=engine_args.max_lora_cls_labels,
        max_cpu_loras=engine_args.max_cpu_loras
        if engine_args.max_cpu_loras and engine_args.max_cpu_loras > 0
        else None,
    )


def middleware_kind(import_path: str) -> str:
    """What vLLM's `init_entrypoints_middleware` makes of one `--middleware` value."""
    module_path, object_name = import_path.rsplit(".", 1)
    imported = getattr(importlib.import_module(module_path), object_name)
    if inspect.isclass(imported):
        return "class"
    if inspect.iscoroutinefunction(imported):
        return "function"
    raise ValueError(f"Invalid middleware {import_path}. Must be a function or a class.")


def jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def judge_serve_argv(parser: FlexibleArgumentParser, serve: ServeSubcommand, argv: list[str],
                     report: list[str]) -> dict:
    if argv[:2] != ["vllm", "serve"]:
        return {"ok": False, "error": f"not a `vllm serve` command line: {argv[:2]}"}
    # argparse reports a bad command line on stderr and exits; its last line is the message.
    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages):
            args = parser.parse_args(["serve", *argv[2:]])
        serve.validate(args)
        if args.model_tag is not None:
            args.model = args.model_tag
        engine_args = AsyncEngineArgs.from_cli_args(args)
        lora_config = lora_config_of(engine_args)
        middlewares = {path: middleware_kind(path) for path in args.middleware}
    except SystemExit:
        return {"ok": False, "error": messages.getvalue().strip().splitlines()[-1]}
    except Exception as exc:  # vLLM's checks raise ValueError, TypeError, pydantic errors...
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "ok": True,
        "values": {name: jsonable(getattr(args, name)) for name in report},
        "lora_config": None if lora_config is None else {
            "max_loras": lora_config.max_loras,
            "max_cpu_loras": lora_config.max_cpu_loras,
            "max_lora_rank": lora_config.max_lora_rank,
        },
        "middlewares": middlewares,
    }


def judge_body(model: type, request: dict) -> dict:
    scope = {"type": "http", "headers": [(b"content-type", request["content_type"].encode())]}
    try:
        asyncio.run(validate_json_request(Request(scope)))
        validated = model.model_validate(request["body"])
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "validated": validated.model_dump(),
            "ignored_keys": sorted(set(request["body"]) - set(model.model_fields))}


SAMPLING_REPORTED = ("n", "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "stop", "logprobs",
                     "logit_bias", "max_tokens")


def judge_chat(body: dict) -> dict:
    try:
        sampling = ChatCompletionRequest.model_validate(body).to_sampling_params(16, {})
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "sampling": {name: jsonable(getattr(sampling, name)) for name in SAMPLING_REPORTED}}


def error_bodies() -> dict[str, tuple[int, dict]]:
    """vLLM's error responses: to a body with five stop sequences, as FastAPI hands its
    validation error to vLLM's handler, and to the exceptions its serving code raises."""
    try:
        ChatCompletionRequest.model_validate({"messages": [], "stop": ["a", "b", "c", "d", "e"]})
    except ValidationError as exc:
        refused = RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()])
    else:
        raise AssertionError("vLLM took five stop sequences")
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(args=SimpleNamespace(log_error_stack=False))))
    validation = asyncio.run(validation_exception_handler(request, refused))
    raised = {
        "bad-temperature": VLLMValidationError("temperature must be in [0, 2], got 3.0.", parameter="temperature"),
        "unknown-model": VLLMNotFoundError("The model `ft:x` does not exist."),
        "unprocessable": VLLMUnprocessableEntityError("cannot fetch the image", parameter="messages"),
        "queue-full": QueueOverflowError(),
        "retryable": RetryableRequestError(),
        "generation-failed": GenerationError(),
        "not-implemented": NotImplementedError("beam search with tools"),
    }
    bodies = {"five-stops": (validation.status_code, json.loads(validation.body))}
    for name, exc in raised.items():
        response = create_error_response(exc)
        bodies[name] = (response.error.code, response.model_dump())
    return bodies


def main() -> None:
    request = json.load(sys.stdin)
    parser, serve = serve_parser()
    verdicts = {
        "lora_ranks": list(typing.get_args(MaxLoRARanks)),
        "serve_argvs": [judge_serve_argv(parser, serve, argv, request["report"]) for argv in request["serve_argvs"]],
        "load_requests": [judge_body(LoadLoRAAdapterRequest, body) for body in request["load_requests"]],
        "unload_requests": [judge_body(UnloadLoRAAdapterRequest, body) for body in request["unload_requests"]],
        "chat_requests": [judge_chat(body) for body in request.get("chat_requests", [])],
        "error_bodies": error_bodies(),
    }
    print(json.dumps(verdicts))


if __name__ == "__main__":
    main()
