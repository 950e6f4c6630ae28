"""vLLM's own API server app, built from a `vllm serve` command line, answering HTTP
requests in-process: which routes a caller without the serving token reaches.

Runs where vLLM is importable (`tests.support.vllm_code.run_with_vllm`). Reads one JSON
request on stdin, prints one JSON line:

    in:  {"apps": {name: {"argv": [...], "env": {VAR: value | null}}},
          "requests": [{"method": str, "path": str, "headers": {...}, "json": ... | null}, ...]}
    out: {name: {"built": true, "middlewares": [...], "routes": [...], "responses": [...],
                 "engine_add_lora": [...], "loaded": [...]}
               | {"built": false, "error": "<type>: <message>"}}

Each app is built in a process of its own, forked from one that has imported vLLM but
built nothing (vLLM, model-hosting-container-standards and prometheus keep module-level
registries that a second `build_app` would share), with its `env` applied (null
removes a variable) the way the launcher's `exec_vllm` hands it to vLLM:
1. the argv is parsed by the `vllm serve` parser and validated as in
   tests.support.vllm_judge (`serve_parser`, `ServeSubcommand.validate`, model_tag);
2. `vllm.entrypoints.launchers.app.build_app(args, ("generate",))`, what
   `build_and_serve` (vllm/entrypoints/launchers/api_server/entry.py) calls with a
   generative model's supported tasks, less its ModelConfig (None here; with only
   "generate", no router reads it): all routers (the /v1 LoRA routes and, through
   model-hosting-container-standards, SageMaker's /adapters routes), the exception
   handlers, `init_entrypoints_middleware` (CORS, vLLM's API-key middleware from
   VLLM_API_KEY, then each `--middleware`), and `sagemaker_standards_bootstrap`, which
   re-orders the middlewares and builds the middleware stack: our middleware's
   constructor runs here, so an app it refuses is reported as not built;
3. of `init_app_state` (which needs a running engine) only what the routes exercised
   need, as it sets them: `state.engine_client` and `state.openai_serving_models`, vLLM's
   real `OpenAIServingModels` over a stub engine client that records `add_lora` and is
   always healthy;
4. the requests, in order, through Starlette's TestClient (no lifespan, no socket; a
   handler's exception becomes a 500, recorded like any answer).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import traceback
from typing import Any

# -- in the vLLM subprocess ------------------------------------------------------------------


class StubEngineClient:
    """What OpenAIServingModels and vLLM's /health read of an EngineClient."""

    def __init__(self, model: str) -> None:
        from types import SimpleNamespace

        self.model_config = SimpleNamespace(model=model, max_model_len=2048)
        self.renderer = None
        self.input_processor = None
        self.added: list[str] = []

    async def add_lora(self, lora_request) -> bool:
        self.added.append(lora_request.lora_name)
        return True

    async def check_health(self) -> None:
        return None


def probe_app(app_request: dict, requests: list[dict]) -> dict:
    for name, value in app_request["env"].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    from starlette.testclient import TestClient
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.openai.models.protocol import BaseModelPath
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels

    from tests.support.vllm_judge import serve_parser

    argv = app_request["argv"]
    assert argv[:2] == ["vllm", "serve"], argv[:2]
    parser, serve = serve_parser()
    args = parser.parse_args(["serve", *argv[2:]])
    serve.validate(args)
    if args.model_tag is not None:
        args.model = args.model_tag
    try:
        app = build_app(args, ("generate",))
    except Exception as exc:
        return {"built": False, "error": f"{type(exc).__name__}: {exc}"}

    engine = StubEngineClient(args.model)
    app.state.engine_client = engine
    app.state.openai_serving_models = OpenAIServingModels(
        engine_client=engine,
        base_model_paths=[BaseModelPath(name=name, model_path=args.model)
                          for name in (args.served_model_name or [args.model])],
    )
    client = TestClient(app, raise_server_exceptions=False)
    responses = []
    for request in requests:
        response = client.request(request["method"], request["path"], headers=request.get("headers") or {},
                                  json=request.get("json"))
        responses.append({"status": response.status_code, "body": response.text[:500]})
    return {
        "built": True,
        "middlewares": [getattr(m.cls, "__qualname__", str(m.cls)) for m in app.user_middleware],
        "routes": sorted({f"{method} {route.path}" for route in app.routes
                          for method in (getattr(route, "methods", None) or ())}),
        "responses": responses,
        "engine_add_lora": engine.added,
        "loaded": sorted(app.state.openai_serving_models.lora_requests),
    }


def _child(connection, app_request: dict, requests: list[dict]) -> None:
    os.dup2(2, 1)  # whatever vLLM or its dependencies print stays off the answer
    try:
        result = probe_app(app_request, requests)
    except BaseException:
        result = {"built": False, "error": "probe failed:\n" + traceback.format_exc()}
    connection.send(json.dumps(result))
    connection.close()


def in_fresh_process(app_request: dict, requests: list[dict]) -> Any:
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sending, app_request, requests))
    process.start()
    sending.close()
    try:
        return json.loads(receiving.recv())
    except EOFError:
        return {"built": False, "error": "probe process died without an answer"}
    finally:
        process.join()


def main() -> None:
    request = json.load(sys.stdin)
    # Imported once here so every forked app starts from the same, unbuilt, vLLM.
    import vllm.entrypoints.launchers.app  # noqa: F401
    import vllm.entrypoints.openai.models.serving  # noqa: F401

    answers = {name: in_fresh_process(app, request["requests"]) for name, app in request["apps"].items()}
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
