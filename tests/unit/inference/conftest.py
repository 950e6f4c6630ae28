"""Fixtures for the inference tests: LoRA adapters made with peft at test time, and the
CPU engine served by uvicorn on a loopback port in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tuneforge.contracts import AdapterSource, ServingSpec

from tests.support.lora import make_adapter

ADAPTER_NAMES = ("alpha", "beta")
BASE_NAME = "tiny-base"


@pytest.fixture(scope="session")
def adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_model_dir, root / name, seed=seed) for seed, name in enumerate(ADAPTER_NAMES, 1)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    base_url: str
    spec: ServingSpec

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", **{"max_retries": 0, **kwargs})


def wait_until_healthy(base_url: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} did not become healthy in {timeout_s}s")


def serve_in_thread(spec: ServingSpec, cache_dir: Path) -> Iterator[RunningServer]:
    """Builds the app exactly as `tuneforge-serve` does and runs it until the generator closes."""
    from tuneforge_inference.cpu.server import build_app, uvicorn_server

    server = uvicorn_server(build_app(spec, cache_dir=cache_dir), "127.0.0.1", spec.port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{spec.port}"
    try:
        wait_until_healthy(base_url)
        yield RunningServer(base_url, spec)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def cpu_server(tiny_model_dir: Path, adapter_dirs: dict[str, Path], tmp_path_factory) -> Iterator[RunningServer]:
    """One engine for the module: base model plus `alpha` preloaded; `beta` is loaded at
    runtime by the tests. A queue of 2 lets the back-pressure test fill it cheaply."""
    spec = ServingSpec(
        deployment="tiny",
        namespace="test",
        served_model_name=BASE_NAME,
        base_model_uri=str(tiny_model_dir),
        adapters=[AdapterSource(name="alpha", uri=str(adapter_dirs["alpha"]))],
        max_adapters=2,
        max_adapter_rank=16,
        port=free_port(),
        max_queue=2,
    )
    yield from serve_in_thread(spec, tmp_path_factory.mktemp("serve-cache"))
