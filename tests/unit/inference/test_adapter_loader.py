"""The adapter-loader sidecar of serving Pods, over real HTTP: `tuneforge-serve
--adapter-loader` as its own process, an S3-compatible server as the artifact store holding
the adapters, and the CPU engine standing in for vLLM (it speaks the same load endpoint and,
like vLLM started with an API key, requires the deployment's serving token on /v1).

The CPU engine could fetch an `s3://` path by itself, so the tests check what the engine
was handed: its /v1/models card reports the `lora_path` it loaded from, which must be a
directory in the cache the sidecar shares with the engine, not the URI.

The security contract: only a caller with the token loads; a name loads only from its own
job's adapter directory (or the source the deployment lists for it); a name the engine
already holds from another source is replaced, never served as that model.
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

from tuneforge.contracts import AdapterSource, Engine, ServingSpec
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.routing import Adapter, Route, Router, _ready_pods, adapter_path
from tuneforge.serving_auth import bearer

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
    run_file: Path

    def post(self, path: str, body: dict) -> httpx.Response:
        """A call as the gateway makes it, with the deployment's token."""
        return httpx.post(f"{self.url}{path}", json=body, headers=bearer(TOKEN), timeout=120)


TOKEN = "deployment-token"
OTHER_BASE = "other-base"


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str, adapter_dirs: dict[str, Path]) -> str:
    """The store root: `team`'s job `ftjob-s3` holds a whole adapter as the trainer writes it,
    `ftjob-broken` lacks weights; tenant `rival` has a job `ftjob-rival` of its own."""
    root = new_bucket("tuneforge-adapter-loader")
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for file in adapter_dirs["beta"].iterdir():
        fs.put_file(str(file), f"{root}/team/fine-tuning/ftjob-s3/adapter/{file.name}")
    for file in adapter_dirs["alpha"].iterdir():
        fs.put_file(str(file), f"{root}/rival/fine-tuning/ftjob-rival/adapter/{file.name}")
    fs.put_file(str(adapter_dirs["beta"] / "adapter_config.json"),
                f"{root}/team/fine-tuning/ftjob-broken/adapter/adapter_config.json")
    return root


def job_adapter(bucket: str, tenant: str, job: str) -> str:
    return f"{bucket}/{tenant}/fine-tuning/{job}/adapter"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    spec = ServingSpec(deployment="tiny", namespace="test", served_model_name=BASE_NAME,
                       base_model_uri=str(tiny_model_dir), max_adapter_rank=16, port=free_port())
    yield from serve_in_thread(spec, tmp_path_factory.mktemp("engine-cache"), token=TOKEN)


@contextmanager
def running_loader(engine_port: int, workdir: Path, bucket: str,
                   adapters: list[AdapterSource] = ()) -> Iterator[Loader]:
    """The sidecar as the Pod runs it: its own process, the Pod's ServingSpec, the shared
    cache in TUNEFORGE_CACHE_DIR, the store root and credentials and the serving token in
    the environment."""
    spec = ServingSpec(deployment="tiny", namespace="team", served_model_name=BASE_NAME,
                       base_model_uri="s3://unused/model", engine=Engine.vllm, gpu_count=1, port=engine_port,
                       adapter_loader_port=free_port(), adapters=list(adapters))
    (workdir / "serving.json").write_text(spec.dump())
    loader = Loader(f"http://127.0.0.1:{spec.adapter_loader_port}", workdir / "shared-cache", workdir / "serving.json")
    env = {**os.environ, "TUNEFORGE_BIND_HOST": "127.0.0.1", "TUNEFORGE_CACHE_DIR": str(loader.cache),
           "TUNEFORGE_STORE_ROOT": bucket, "TUNEFORGE_SERVING_TOKEN": TOKEN}
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
    with running_loader(engine.spec.port, tmp_path_factory.mktemp("loader"), bucket) as running:
        yield running


def engine_loads(engine: RunningServer) -> float:
    """How many load requests reached the engine (its own request counter)."""
    lines = httpx.get(f"{engine.base_url}/metrics").text.splitlines()
    prefix = f'tuneforge_requests_total{{endpoint="{LOAD}"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


def held(engine: RunningServer) -> dict[str, dict]:
    return {card.id: card.model_dump() for card in engine.client().models.list()}


def test_an_s3_adapter_is_copied_into_the_shared_cache_and_the_engine_loads_that_copy(
    engine: RunningServer, loader: Loader, bucket: str, adapter_dirs: dict[str, Path]
):
    name, uri = "ft:tiny-base:team::ftjob-s3", job_adapter(bucket, "team", "ftjob-s3")
    response = loader.post(LOAD, {"lora_name": name, "lora_path": uri})
    assert response.status_code == 200, response.text
    assert response.text == f"Success: LoRA adapter '{name}' added successfully."

    cards = held(engine)
    assert cards[name]["parent"] == BASE_NAME
    handed = Path(cards[name]["root"])
    assert handed.parent == loader.cache / "adapters", f"the engine was handed {cards[name]['root']}"
    assert json.loads((handed / ".tuneforge-manifest.json").read_text())["uri"] == uri
    for file in ADAPTER_FILES:
        assert (handed / file).read_bytes() == (adapter_dirs["beta"] / file).read_bytes()

    reply = engine.client().chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=3)
    assert reply.model == name and reply.usage.completion_tokens >= 1

    before = engine_loads(engine)
    again = loader.post(LOAD, {"lora_name": name, "lora_path": uri})
    assert again.status_code == 200, again.text
    assert engine_loads(engine) == before, "a name already loaded from its own source is not loaded again"


def test_the_gateway_sends_loads_for_a_pod_with_the_sidecar_through_it(engine: RunningServer, loader: Loader,
                                                                      bucket: str):
    """Router.ensure_adapter on a Pod shaped like the builder's serving Pod (engine port
    `http`, sidecar port `adapters`): the load goes through the sidecar, with the token."""
    ports = [[{"name": "http", "containerPort": engine.spec.port}],
             [{"name": "adapters", "containerPort": httpx.URL(loader.url).port}]]
    [pod] = _ready_pods([{
        "metadata": {"name": "serving-0", "uid": "u-serving-0"},
        "spec": {"containers": [{"ports": p} for p in ports]},
        "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }])
    name = "ft:tiny-base:team:routed:ftjob-s3"
    adapter = Adapter(name=name, path=adapter_path(job_adapter(bucket, "team", "ftjob-s3")))

    async def load(token: str) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            router = Router(kube=None, http=http, cache_seconds=0)
            route = Route(namespace="ns", deployment="d", model=name, pods=[pod], adapter=adapter, max_adapters=4,
                          token=token, saturation=8)
            await router.ensure_adapter(pod, route, "r-1")

    with pytest.raises(OpenAIError) as refused:
        asyncio.run(load("not-the-token"))
    assert refused.value.status == 502 and "401" in refused.value.message
    assert name not in held(engine)
    asyncio.run(load(TOKEN))
    assert Path(held(engine)[name]["root"]).parent == loader.cache / "adapters"


def test_a_caller_without_the_token_can_load_nothing(engine: RunningServer, loader: Loader, bucket: str):
    before = engine_loads(engine)
    body = {"lora_name": "ft:tiny-base:team:nokey:ftjob-s3", "lora_path": job_adapter(bucket, "team", "ftjob-s3")}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for url in (loader.url, engine.base_url):
            response = httpx.post(f"{url}{LOAD}", json=body, headers=headers, timeout=30)
            assert response.status_code == 401, (url, headers, response.text)
    assert body["lora_name"] not in held(engine)
    assert engine_loads(engine) == before + 3, "the engine refused the three direct attempts itself"
    assert httpx.get(f"{loader.url}/health").status_code == httpx.get(f"{engine.base_url}/health").status_code == 200


@pytest.mark.parametrize(("name", "tenant", "job"), [
    ("ft:tiny-base:team::ftjob-s3", "rival", "ftjob-rival"),          # my name, another tenant's weights
    ("ft:tiny-base:rival::ftjob-rival", "team", "ftjob-s3"),          # another tenant's name, my weights
    ("ft:tiny-base:team::ftjob-s3", "team", "ftjob-broken"),          # my name, another job's directory
    (f"ft:{OTHER_BASE}:team::ftjob-s3", "team", "ftjob-s3"),          # a fine-tune of another base model
    ("my-alias", "team", "ftjob-s3"),                                 # a name the deployment does not list
])
def test_a_name_loads_only_from_its_own_source(engine: RunningServer, loader: Loader, bucket: str,
                                               name: str, tenant: str, job: str):
    before = engine_loads(engine)
    response = loader.post(LOAD, {"lora_name": name, "lora_path": job_adapter(bucket, tenant, job)})
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["type"] == "PermissionDeniedError" and error["code"] == 403
    assert engine_loads(engine) == before


def test_a_name_preregistered_from_another_source_is_replaced_not_served(
    engine: RunningServer, loader: Loader, bucket: str, adapter_dirs: dict[str, Path]
):
    """Someone with the engine's token registered tenant team's model name on the engine
    with other weights (the rival's adapter); the gateway's load through the sidecar must
    not take that as done."""
    name = "ft:tiny-base:team:squat:ftjob-s3"
    squatted = httpx.post(f"{engine.base_url}{LOAD}", json={"lora_name": name, "lora_path": str(adapter_dirs["alpha"])},
                          headers=bearer(TOKEN), timeout=60)
    assert squatted.status_code == 200
    assert held(engine)[name]["root"] == str(adapter_dirs["alpha"])

    response = loader.post(LOAD, {"lora_name": name, "lora_path": job_adapter(bucket, "team", "ftjob-s3")})
    assert response.status_code == 200, response.text
    handed = Path(held(engine)[name]["root"])
    assert handed.parent == loader.cache / "adapters"
    assert json.loads((handed / ".tuneforge-manifest.json").read_text())["uri"] == job_adapter(bucket, "team",
                                                                                              "ftjob-s3")


def test_unloads_are_forwarded(engine: RunningServer, loader: Loader, bucket: str):
    name = "ft:tiny-base:team:again:ftjob-s3"
    assert loader.post(LOAD, {"lora_name": name, "lora_path": job_adapter(bucket, "team", "ftjob-s3")}).status_code == 200
    assert loader.post(UNLOAD, {"lora_name": name}).status_code == 200
    assert name not in held(engine)
    gone = loader.post(UNLOAD, {"lora_name": name})
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "NotFoundError"


def test_an_adapter_the_deployment_lists_loads_under_its_name_even_when_listed_after_start(
    engine: RunningServer, bucket: str, tmp_path: Path
):
    uri = job_adapter(bucket, "team", "ftjob-s3")
    with running_loader(engine.spec.port, tmp_path, bucket) as loader:
        assert loader.post(LOAD, {"lora_name": "support-bot", "lora_path": uri}).status_code == 403
        spec = ServingSpec.load(loader.run_file)
        # What the kubelet does to the mounted ConfigMap when the deployment's adapters change.
        loader.run_file.write_text(spec.model_copy(update={"adapters": [AdapterSource(name="support-bot",
                                                                                       uri=uri)]}).dump())
        response = loader.post(LOAD, {"lora_name": "support-bot", "lora_path": uri})
        assert response.status_code == 200, response.text
        assert "support-bot" in held(engine)


@pytest.mark.parametrize("job", ["ftjob-missing", "ftjob-broken"])
def test_an_adapter_that_cannot_be_fetched_is_404_and_never_reaches_the_engine(
    engine: RunningServer, loader: Loader, bucket: str, job: str
):
    before = engine_loads(engine)
    uri = job_adapter(bucket, "team", job)
    response = loader.post(LOAD, {"lora_name": f"ft:tiny-base:team::{job}", "lora_path": uri})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "NotFoundError" and error["code"] == 404 and uri in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert engine_loads(engine) == before


def test_bad_requests_are_400_in_the_engines_error_shape(loader: Loader):
    missing = loader.post(LOAD, {"lora_name": "x"})
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "InvalidUserInput"
    not_json = httpx.post(f"{loader.url}{LOAD}", content=b"{", headers={"content-type": "application/json",
                                                                         **bearer(TOKEN)})
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == 400


def test_an_unreachable_engine_is_a_5xx_error(bucket: str, tmp_path: Path):
    with running_loader(free_port(), tmp_path, bucket) as loader:
        response = loader.post(LOAD, {"lora_name": "ft:tiny-base:team::ftjob-s3",
                                      "lora_path": job_adapter(bucket, "team", "ftjob-s3")})
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["type"] == "ServiceUnavailableError" and error["code"] == 503
        assert "unreachable" in error["message"]
