"""Builds the CPU engine a ServingSpec describes and serves it with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from tuneforge.contracts import ServingSpec

from tuneforge_inference.cpu.app import create_app
from tuneforge_inference.cpu.engine import Engine
from tuneforge_inference.cpu.errors import APIError
from tuneforge_inference.fetch import FetchError, fetch_base_model

log = logging.getLogger(__name__)


def build_app(spec: ServingSpec, cache_dir: Path | None = None, token: str | None = None) -> FastAPI:
    """Fetches the base model and the spec's adapters and returns the ready app, which
    requires `token` on its /v1 routes (see tuneforge.serving_auth).

    Adapters are loaded before the server listens, so a Pod turns ready only once every
    adapter in its spec answers (a broken adapter fails the start instead).
    """
    engine = Engine(
        fetch_base_model(spec.base_model_uri, cache_dir),
        spec.served_model_name,
        max_adapters=spec.max_adapters,
        max_adapter_rank=spec.max_adapter_rank,
        max_model_length=spec.max_model_length,
        cache_dir=cache_dir,
    )
    for source in spec.adapters:
        try:
            engine.adapters.add(engine.adapters.fetch(source.name, source.uri))
        except APIError as exc:
            raise FetchError(f"adapter {source.name!r}: {exc.message}") from exc
        log.info("loaded adapter %s from %s", source.name, source.uri)
    return create_app(engine, spec.max_queue, token)


def uvicorn_server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
