"""The adapter-loader sidecar of vLLM Pods on object stores, over real HTTP: `tuneforge-serve
--adapter-loader` as its own process, an S3-compatible server holding the adapter, and the
CPU engine standing in for vLLM (it speaks the same load endpoint).

The CPU engine could fetch an `s3://` path by itself, so the tests check what the engine
was handed: its /v1/models card reports the `lora_path` it loaded from, which must be a
directory in the cache the sidecar shares with the engine, not the URI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import fsspec
import httpx
import pytest

from tuneforge.contracts import Engine, ServingSpec
from tuneforge.gateway.routing import Adapter, Route, Router, _ready_pods, adapter_path

from tests.support.inference_servers import (
    BASE_NAME,
    RunningServer,
    free_port,
    serve_in_thread,
    wait_until_healthy,
)
from tests.support.s3 import new_bucket

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"


@dataclass
class Loader:
    url: str
    cache: Path

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=120)


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str, adapter_dirs: dict[str, Path]) -> str:
    """`ftjob-s3` holds a whole adapter as the trainer writes it; `ftjob-broken` lacks weights."""
    root = new_bucket("tuneforge-adapter-loader")
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for file in adapter_dirs["beta"].iterdir():
        fs.put_file(str(file), f"{root}/team/fine-tuning/ftjob-s3/adapter/{file.name}")
    fs.put_file(str(adapter_dirs["beta"] / "adapter_config.json"),
                f"{root}/team/fine-tuning/ftjob-broken/adapter/adapter_config.json")
    return root


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    spec = ServingSpec(deployment="tiny", namespace="test", served_model_name=BASE_NAME,
                       base_model_uri=str(tiny_model_dir), max_adapter_rank=16, port=free_port())
    yield from serve_in_thread(spec, tmp_path_factory.mktemp("engine-cache"))


@contextmanager
def running_loader(engine_port: int, workdir: Path) -> Iterator[Loader]:
    """The sidecar as the Pod runs it: its own process, the Pod's ServingSpec, the shared
    cache in TUNEFORGE_CACHE_DIR and the store credentials in the environment."""
    spec = ServingSpec(deployment="tiny", namespace="test", served_model_name=BASE_NAME,
                       base_model_uri="s3://unused/model", engine=Engine.vllm, gpu_count=1, port=engine_port,
                       adapter_loader_port=free_port())
    (workdir / "serving.json").write_text(spec.dump())
    loader = Loader(f"http://127.0.0.1:{spec.adapter_loader_port}", workdir / "shared-cache")
    env = {**os.environ, "TUNEFORGE_BIND_HOST": "127.0.0.1", "TUNEFORGE_CACHE_DIR": str(loader.cache)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge_inference", "--adapter-loader", "--run", str(workdir / "serving.json")],
        env=env,
    )
    try:
        wait_until_healthy(loader.url, timeout_s=60)
        yield loader
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def loader(engine: RunningServer, bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loader]:
    with running_loader(engine.spec.port, tmp_path_factory.mktemp("loader")) as running:
        yield running


def engine_loads(engine: RunningServer) -> float:
    """How many load requests reached the engine (its own request counter)."""
    lines = httpx.get(f"{engine.base_url}/metrics").text.splitlines()
    prefix = f'tuneforge_requests_total{{endpoint="{LOAD}"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


def test_an_s3_adapter_is_copied_into_the_shared_cache_and_the_engine_loads_that_copy(
    engine: RunningServer, loader: Loader, bucket: str, adapter_dirs: dict[str, Path]
):
    name, uri = "ft:tiny-base:team::ftjob-s3", f"{bucket}/team/fine-tuning/ftjob-s3/adapter"
    response = loader.post(LOAD, {"lora_name": name, "lora_path": uri})
    assert response.status_code == 200, response.text
    assert response.text == f"Success: LoRA adapter '{name}' added successfully."

    client = engine.client()
    cards = {card.id: card.model_dump() for card in client.models.list()}
    assert cards[name]["parent"] == BASE_NAME
    handed = Path(cards[name]["root"])
    assert handed.parent == loader.cache / "adapters", f"the engine was handed {cards[name]['root']}"
    assert json.loads((handed / ".tuneforge-manifest.json").read_text())["uri"] == uri
    for file in ADAPTER_FILES:
        assert (handed / file).read_bytes() == (adapter_dirs["beta"] / file).read_bytes()

    reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.model == name and reply.usage.completion_tokens >= 1


def test_the_gateway_sends_loads_for_a_pod_with_the_sidecar_through_it(engine: RunningServer, loader: Loader,
                                                                      bucket: str):
    """Router.ensure_adapter on a Pod shaped like the builder's vLLM Pod (engine port
    `http`, sidecar port `adapters`): the load goes through the sidecar, so the engine
    is handed the cached copy."""
    ports = [[{"name": "http", "containerPort": engine.spec.port}],
             [{"name": "adapters", "containerPort": httpx.URL(loader.url).port}]]
    [pod] = _ready_pods([{
        "metadata": {"name": "vllm-0", "uid": "u-vllm-0"},
        "spec": {"containers": [{"ports": p} for p in ports]},
        "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }])
    name = "ft:tiny-base:team::ftjob-routed"
    adapter = Adapter(name=name, path=adapter_path(f"{bucket}/team/fine-tuning/ftjob-s3/adapter"))

    async def load() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            router = Router(kube=None, http=http, cache_seconds=0)
            await router.ensure_adapter(pod, Route(deployment="d", pods=[pod], adapter=adapter, max_adapters=4), "r-1")

    asyncio.run(load())
    card = next(card.model_dump() for card in engine.client().models.list() if card.id == name)
    assert Path(card["root"]).parent == loader.cache / "adapters"


def test_the_engines_answers_pass_through_and_unloads_are_forwarded(engine: RunningServer, loader: Loader,
                                                                    bucket: str):
    name, uri = "ft:tiny-base:team::ftjob-again", f"{bucket}/team/fine-tuning/ftjob-s3/adapter"
    assert loader.post(LOAD, {"lora_name": name, "lora_path": uri}).status_code == 200
    again = loader.post(LOAD, {"lora_name": name, "lora_path": uri})
    assert again.status_code == 400 and again.json()["error"]["type"] == "InvalidUserInput"
    assert "already been loaded" in again.json()["error"]["message"]
    assert loader.post(LOAD, {"lora_name": name, "lora_path": uri, "load_inplace": True}).status_code == 200

    assert loader.post(UNLOAD, {"lora_name": name}).status_code == 200
    assert name not in {card.id for card in engine.client().models.list()}
    gone = loader.post(UNLOAD, {"lora_name": name})
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "NotFoundError"


@pytest.mark.parametrize("job", ["ftjob-missing", "ftjob-broken"])
def test_an_adapter_that_cannot_be_fetched_is_404_and_never_reaches_the_engine(
    engine: RunningServer, loader: Loader, bucket: str, job: str
):
    before = engine_loads(engine)
    uri = f"{bucket}/team/fine-tuning/{job}/adapter"
    response = loader.post(LOAD, {"lora_name": f"ft:tiny-base:team::{job}", "lora_path": uri})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "NotFoundError" and error["code"] == 404 and uri in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert engine_loads(engine) == before


def test_bad_requests_are_400_in_the_engines_error_shape(loader: Loader):
    missing = loader.post(LOAD, {"lora_name": "x"})
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "InvalidUserInput"
    not_json = httpx.post(f"{loader.url}{LOAD}", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == 400


def test_an_unreachable_engine_is_a_5xx_error(bucket: str, tmp_path: Path):
    with running_loader(free_port(), tmp_path) as loader:
        response = loader.post(LOAD, {"lora_name": "ft:tiny-base:team::ftjob-s3",
                                      "lora_path": f"{bucket}/team/fine-tuning/ftjob-s3/adapter"})
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["type"] == "ServiceUnavailableError" and error["code"] == 503
        assert "unreachable" in error["message"]
