"""Fixtures for the inference tests: LoRA adapters made with peft at test time, and the
CPU engine served in a background thread (tests/support/inference_servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneforge.contracts import AdapterSource, ServingSpec

from tests.support.inference_servers import BASE_NAME, RunningServer, free_port, serve_in_thread
from tests.support.lora import make_adapter

ADAPTER_NAMES = ("alpha", "beta")


@pytest.fixture(scope="session")
def adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_model_dir, root / name, seed=seed) for seed, name in enumerate(ADAPTER_NAMES, 1)}


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
