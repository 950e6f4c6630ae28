"""The CPU engine's HTTP API: the subset of vLLM's OpenAI server tuneforge relies on.

Routes: /v1/chat/completions (JSON or SSE), /v1/models, /health, /metrics, and vLLM's
runtime adapter endpoints /v1/load_lora_adapter and /v1/unload_lora_adapter with vLLM's
contract: JSON body {lora_name, lora_path}; success is 200 with a plain-text sentence;
failures are the JSON error object (400 InvalidUserInput for missing fields or a
duplicate name, 404 NotFoundError for an unknown adapter or path).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tuneforge_inference.cpu.engine import Engine
from tuneforge_inference.cpu.errors import APIError, bad_request, install_handlers, require_token
from tuneforge_inference.cpu.generation import Delta, GenerationResult
from tuneforge_inference.cpu.metrics import EngineMetrics
from tuneforge_inference.cpu.protocol import (
    ChatCompletionRequest,
    LoadLoRAAdapterRequest,
    UnloadLoRAAdapterRequest,
    parse_request,
)
from tuneforge_inference.cpu.responses import DONE, Completion, sse
from tuneforge_inference.cpu.worker import Worker


async def _json_body(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from exc


def invalid_user_input(message: str) -> APIError:
    return APIError(HTTPStatus.BAD_REQUEST, message, err_type="InvalidUserInput")


def create_app(engine: Engine, max_queue: int, token: str | None = None) -> FastAPI:
    worker = Worker(max_queue)
    metrics = EngineMetrics(
        waiting=lambda: worker.waiting,
        running=lambda: worker.running,
        resident_adapters=lambda: len(engine.adapters.resident),
        known_adapters=lambda: len(engine.adapters.known),
        adapter_loads=lambda: engine.adapters.loads,
    )
    adapter_lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        worker.shutdown()

    app = FastAPI(title="tuneforge CPU engine", lifespan=lifespan)
    app.state.engine = engine
    app.state.worker = worker

    install_handlers(app)
    require_token(app, token)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        response = await call_next(request)
        metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict:
        created = int(time.time())

        def card(name: str, root: str, parent: str | None) -> dict:
            return {"id": name, "object": "model", "created": created, "owned_by": "tuneforge", "root": root,
                    "parent": parent, "max_model_len": engine.max_model_length}

        cards = [card(engine.served_model_name, str(engine.model_dir), None)]
        cards += [card(a.name, a.source, engine.served_model_name) for a in engine.adapters.known.values()]
        return {"object": "list", "data": cards}

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        body = parse_request(LoadLoRAAdapterRequest, await _json_body(request))
        if not body.lora_name or not body.lora_path:
            raise invalid_user_input("Both 'lora_name' and 'lora_path' must be provided.")
        async with adapter_lock:
            if not body.load_inplace and body.lora_name in engine.adapters.known:
                raise invalid_user_input(
                    f"The lora adapter '{body.lora_name}' has already been loaded. If you want to load the "
                    "adapter in place, set 'load_inplace' to True."
                )
            adapter = await asyncio.to_thread(engine.adapters.fetch, body.lora_name, body.lora_path)
            await worker.call(lambda: engine.adapters.add(adapter))
        return Response(status_code=200, content=f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        body = parse_request(UnloadLoRAAdapterRequest, await _json_body(request))
        if not body.lora_name:
            raise invalid_user_input("'lora_name' needs to be provided to unload a LoRA adapter.")
        async with adapter_lock:
            if body.lora_name not in engine.adapters.known:
                raise APIError(
                    HTTPStatus.NOT_FOUND,
                    f"The lora adapter '{body.lora_name}' cannot be found.",
                    err_type="NotFoundError",
                )
            await worker.call(lambda: engine.adapters.remove(body.lora_name))
        return Response(status_code=200, content=f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body: ChatCompletionRequest = parse_request(ChatCompletionRequest, await _json_body(request))
        adapter = engine.resolve_model(body.model)
        job = engine.plan(body)
        try:
            worker.admit()
        except APIError:
            metrics.rejected.inc()
            raise
        started = time.perf_counter()
        completion = Completion(model=body.model, with_logprobs=body.logprobs)

        def record(result: GenerationResult) -> None:
            metrics.latency.labels(body.model).observe(time.perf_counter() - started)
            metrics.prompt_tokens.labels(body.model).inc(result.prompt_tokens)
            metrics.generation_tokens.labels(body.model).inc(result.completion_tokens)

        if not body.stream:
            result = await worker.submit(lambda: engine.run(adapter, job))
            record(result)
            return JSONResponse(completion.final(result))

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[Delta | None] = asyncio.Queue()
        gone = threading.Event()

        def on_delta(delta: Delta) -> None:
            loop.call_soon_threadsafe(deltas.put_nowait, delta)

        future = worker.submit(lambda: engine.run(adapter, job, on_delta, gone.is_set))
        # Retrieving the exception here also keeps asyncio from logging a generation that
        # stopped with Cancelled because its client left.
        future.add_done_callback(lambda done: (done.cancelled() or done.exception(), deltas.put_nowait(None)))

        async def events() -> AsyncIterator[str]:
            try:
                yield sse(completion.role_chunk(job.n, include_usage))
                while (delta := await deltas.get()) is not None:
                    yield sse(completion.delta_chunk(delta, include_usage))
                if (failure := future.exception()) is not None:
                    yield _stream_error(failure)
                else:
                    result = future.result()
                    record(result)
                    if include_usage:
                        yield sse(completion.usage_chunk(result))
                yield DONE
            finally:
                gone.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def _stream_error(exc: BaseException) -> str:
    """A failure after the 200 has gone out can only be reported inside the stream, as an
    error event (what vLLM sends too)."""
    error = exc if isinstance(exc, APIError) else APIError(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))
    return sse(error.body())
