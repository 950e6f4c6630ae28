"""vLLM's own code (the version pinned in pyproject's `vllm` extra) judges what tuneforge
hands it: every shape of `vllm serve` command line `vllm_command` builds must parse, with
vLLM's parser and engine arguments, into the values the ServingSpec meant (the serving
token middleware included); the runtime adapter loads and unloads the gateway and the
adapter-loader sidecar send must validate against vLLM's request models; the chat bodies
the gateway forwards (nulls included) must sample as their defaults, and vLLM's own error
bodies must reach clients in OpenAI's terms; and vLLM's own API server app, built from the
launcher's command line, must refuse every adapter route to a caller without the serving
token.

vLLM is never installed: tests.support.vllm_code unpacks its wheel into the cache once and
one subprocess for the whole module runs tests.support.vllm_judge, whose docstring says
how far vLLM's code gets without GPUs and model files; another runs
tests.support.vllm_app_probe, which builds the app.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import httpx
import pytest

from tuneforge.contracts import AdapterSource, Engine, ServingSpec
from tuneforge.gateway.chat import parse_request, upstream_error
from tuneforge.gateway.errors import OpenAIError
from tuneforge.gateway.routing import Adapter, Pod, Route, Router, adapter_path
from tuneforge.serving_auth import TOKEN_ENV, bearer

from tests.support.inference_servers import free_port, wait_until_healthy
from tests.support.vllm_code import run_with_vllm
from tuneforge_inference.launcher import GUARD_MIDDLEWARE, VLLM_LORA_RANKS, api_key_env, vllm_command

SERVED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""A served name as real deployments have it: the catalog's model id, with '/' and capitals."""
SERVING_TOKEN = "deployment-token"
# Adapter directories as they reach the launcher: the fetch cache, and paths on a mounted
# store, where '=' and ',' are legal; either breaks the `name=path` form vLLM also accepts.
ADAPTER_PATHS = {
    f"ft:{SERVED_NAME}:team::ftjob-a": Path("/cache/adapters/3f2a9c0d"),
    f"ft:{SERVED_NAME}:team::ftjob-b": Path("/mnt/pvc/store/team=ml/fine-tuning/ftjob-b,v2/adapter"),
    f"ft:{SERVED_NAME}:team::ftjob-c": Path("/mnt/pvc/store/a=1,b=2/adapter"),
}
ADAPTER_SETS = {
    "no-adapters": (),
    "one-adapter": (f"ft:{SERVED_NAME}:team::ftjob-b",),
    "three-adapters": tuple(ADAPTER_PATHS),
}
# (max_adapters, max_adapter_rank): ranks vLLM takes as they are, and ranks the launcher
# must round up to one it accepts.
ADAPTER_LIMITS = ((1, 3), (4, 64), (8, 200), (2, 256), (16, 512))
SERVING_SHAPES = {
    "defaults": ({}, "0.0.0.0"),
    "tuned": ({"max_model_length": 4096, "port": 9000, "gpu_memory_utilization": 0.5}, "10.0.0.7"),
}
PASSED_THROUGH = ["--quantization", "awq", "--dtype", "bfloat16", "--enforce-eager", "--max-num-seqs", "64"]
PASSED_THROUGH_VALUES = {"quantization": "awq", "dtype": "bfloat16", "enforce_eager": True, "max_num_seqs": 64}
REPORTED = ["model", "served_model_name", "host", "port", "tensor_parallel_size", "gpu_memory_utilization",
            "enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras", "lora_modules", "max_model_len",
            "middleware", *PASSED_THROUGH_VALUES]


@dataclass(frozen=True)
class Case:
    spec: ServingSpec
    host: str
    adapter_paths: dict[str, Path] = field(default_factory=dict)

    def argv(self, model_dir: Path) -> list[str]:
        return vllm_command(self.spec, model_dir, self.adapter_paths, self.host)[0]


def serving_spec(**fields) -> ServingSpec:
    return ServingSpec(deployment="d", namespace="ns", served_model_name=SERVED_NAME,
                       base_model_uri="gguf://x/y.gguf", engine=Engine.vllm, **fields)


def matrix() -> dict[str, Case]:
    cases = {}
    for gpus, (max_adapters, rank), (adapter_set, names), (shape, (shape_fields, host)), engine_args in (
        itertools.product((1, 2, 4, 8), ADAPTER_LIMITS, ADAPTER_SETS.items(), SERVING_SHAPES.items(),
                          ([], PASSED_THROUGH))
    ):
        spec = serving_spec(gpu_count=gpus, max_adapters=max_adapters, max_adapter_rank=rank,
                            adapters=[AdapterSource(name=name, uri=f"s3://bucket/{name}") for name in names],
                            engine_args=engine_args, **shape_fields)
        case_id = f"tp{gpus}-loras{max_adapters}-rank{rank}-{adapter_set}-{shape}" + (
            "-engine-args" if engine_args else "")
        cases[case_id] = Case(spec, host, {name: ADAPTER_PATHS[name] for name in names})
    return cases


CASES = matrix()
# engine_args go last so an operator can override the launcher's flags (argparse keeps the
# last value); the override must still satisfy vLLM's cross-field checks. Each maps to the
# (max_loras, max_cpu_loras) vLLM must end up with, the spec's max_adapters being 8.
OVERRIDES = {
    "fewer-max-loras": (Case(serving_spec(gpu_count=1, engine_args=["--max-loras", "4"]), "0.0.0.0"), (4, 8)),
    "more-max-loras": (Case(serving_spec(gpu_count=1, engine_args=["--max-loras", "16"]), "0.0.0.0"), (16, 16)),
    "max-loras-inline": (Case(serving_spec(gpu_count=1, engine_args=["--max-loras=32"]), "0.0.0.0"), (32, 32)),
    "max-loras-underscores": (Case(serving_spec(gpu_count=1, engine_args=["--max_loras", "12"]), "0.0.0.0"),
                              (12, 12)),
    "max-loras-twice": (Case(serving_spec(gpu_count=1, engine_args=["--max-loras", "16", "--max-loras=10"]),
                             "0.0.0.0"), (10, 10)),
    "max-loras-and-adapters": (Case(serving_spec(gpu_count=1, max_adapters=2, engine_args=["--max-loras", "2"],
                                                 adapters=[AdapterSource(name=name, uri=f"s3://bucket/{name}")
                                                           for name in ADAPTER_PATHS]),
                                    "0.0.0.0", ADAPTER_PATHS), (2, 3)),
}


def expected_values(case: Case, model_dir: Path, vllm_ranks: list[int]) -> dict:
    """What the spec means in vLLM's terms, derived from the spec and vLLM's own rank list,
    not from the argv."""
    spec = case.spec
    expected = {
        "model": str(model_dir),
        "served_model_name": [spec.served_model_name],
        "host": case.host,
        "port": spec.port,
        "tensor_parallel_size": spec.gpu_count,
        "gpu_memory_utilization": spec.gpu_memory_utilization,
        "enable_lora": True,
        "max_loras": spec.max_adapters,
        "max_lora_rank": min(rank for rank in vllm_ranks if rank >= spec.max_adapter_rank),
        # Every listed adapter stays in vLLM's CPU cache, which must hold a batch's worth.
        "max_cpu_loras": max(spec.max_adapters, len(spec.adapters)),
        "lora_modules": [
            {"name": a.name, "path": str(case.adapter_paths[a.name]), "base_model_name": spec.served_model_name,
             "is_3d_lora_weight": False}
            for a in spec.adapters
        ] or None,
        "max_model_len": spec.max_model_length,
        "middleware": [GUARD_MIDDLEWARE],
    }
    if spec.engine_args:
        expected |= PASSED_THROUGH_VALUES
    return expected


# -- what the gateway and the sidecar send -------------------------------------------------


@dataclass
class Received:
    path: str
    content_type: str
    body: dict


@contextmanager
def engine_stand_in() -> Iterator[tuple[int, list[Received]]]:
    """Listens where vLLM would and records each load and unload as it arrives on the
    wire, answering like vLLM does when it succeeds (and holding no adapter when asked)."""
    received: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self, content: bytes) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def do_GET(self) -> None:
            self.answer(json.dumps({"object": "list", "data": []}).encode())

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(Received(self.path, self.headers.get("content-type", ""), json.loads(body)))
            self.answer(b"Success: LoRA adapter updated.")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, received
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def running_sidecar(spec: ServingSpec, workdir: Path) -> Iterator[str]:
    """The adapter-loader sidecar as the Pod runs it: its own process on the Pod's
    ServingSpec, with the serving token and the shared cache in its environment."""
    (workdir / "serving.json").write_text(spec.dump())
    env = {**os.environ, "TUNEFORGE_BIND_HOST": "127.0.0.1", "TUNEFORGE_CACHE_DIR": str(workdir / "shared-cache"),
           TOKEN_ENV: SERVING_TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge_inference", "--adapter-loader", "--run", str(workdir / "serving.json")],
        env=env,
    )
    url = f"http://127.0.0.1:{spec.adapter_loader_port}"
    try:
        wait_until_healthy(url, timeout_s=60)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@dataclass
class SentToVllm:
    adapter: Adapter
    gateway_load: Received
    sidecar_load: Received
    sidecar_unload: Received


async def gateway_load(engine_url: str, adapter: Adapter) -> None:
    """Router.ensure_adapter on a Pod whose loads go to the engine itself."""
    pod = Pod(uid="u-0", name="vllm-0", url=engine_url, load_url=engine_url)
    async with aiohttp.ClientSession() as http:
        router = Router(kube=None, http=http, cache_seconds=0)
        route = Route(namespace="ns", deployment="d", model=adapter.name, pods=[pod], adapter=adapter, max_adapters=4,
                      token=SERVING_TOKEN, saturation=8)
        await router.ensure_adapter(pod, route, "r-1")


def adapter_traffic(workdir: Path) -> SentToVllm:
    """What reaches vLLM when the gateway loads an adapter the deployment lists: directly,
    and through the sidecar (which also passes on an unload)."""
    store_adapter = workdir / "store" / "team" / "fine-tuning" / "ftjob-a" / "adapter"
    store_adapter.mkdir(parents=True)
    (store_adapter / "adapter_config.json").write_text("{}")
    (store_adapter / "adapter_model.safetensors").write_bytes(b"weights")
    source = AdapterSource(name=f"ft:{SERVED_NAME}:team::ftjob-a", uri=f"file://{store_adapter}")
    adapter = Adapter(name=source.name, path=adapter_path(source.uri))
    with engine_stand_in() as (engine_port, received):
        asyncio.run(gateway_load(f"http://127.0.0.1:{engine_port}", adapter))
        [to_engine] = received
        spec = serving_spec(gpu_count=1, adapters=[source], port=engine_port, adapter_loader_port=free_port())
        with running_sidecar(spec, workdir) as sidecar:
            load = httpx.post(f"{sidecar}/v1/load_lora_adapter", json=to_engine.body, headers=bearer(SERVING_TOKEN),
                              timeout=60)
            unload = httpx.post(f"{sidecar}/v1/unload_lora_adapter", json={"lora_name": adapter.name},
                                headers=bearer(SERVING_TOKEN), timeout=60)
        assert (load.status_code, unload.status_code) == (200, 200), (load.text, unload.text)
        _, through_sidecar, unloaded = received
    return SentToVllm(adapter, to_engine, through_sidecar, unloaded)


# -- one judge for the module --------------------------------------------------------------


@dataclass
class Judged:
    model_dir: Path
    vllm_ranks: list[int]
    argv_verdicts: dict[str, dict]
    traffic: SentToVllm
    sidecar_cache: Path
    load_verdicts: dict[str, dict]
    unload_verdicts: list[dict]
    chat_verdicts: dict[str, dict]
    error_bodies: dict[str, tuple[int, dict]]


def unrecognized_flag(model_dir: Path) -> list[str]:
    return [*CASES["tp1-loras4-rank64-no-adapters-defaults"].argv(model_dir), "--no-such-flag"]


def unrounded_rank(model_dir: Path) -> list[str]:
    argv = CASES["tp2-loras8-rank200-one-adapter-defaults"].argv(model_dir)
    argv[argv.index("--max-lora-rank") + 1] = "200"
    return argv


def cpu_cache_below_max_loras(model_dir: Path) -> list[str]:
    """The launcher's argv before the fix: --max-cpu-loras from the spec alone."""
    argv = OVERRIDES["more-max-loras"][0].argv(model_dir)
    argv[argv.index("--max-cpu-loras") + 1] = "8"
    return argv


def middleware_named(import_path: str):
    def build(model_dir: Path) -> list[str]:
        argv = CASES["tp1-loras4-rank64-no-adapters-defaults"].argv(model_dir)
        argv[argv.index("--middleware") + 1] = import_path
        return argv
    return build


NEGATIVE_CONTROLS = {
    "unrecognized-flag": unrecognized_flag,
    "unrounded-rank": unrounded_rank,
    "cpu-cache-below-max-loras": cpu_cache_below_max_loras,
    "middleware-not-there": middleware_named("tuneforge_inference.vllm_guard.NoSuchMiddleware"),
    "middleware-not-a-middleware": middleware_named("tuneforge_inference.vllm_guard.OPEN_PATHS"),
}


CHAT_NULLABLE = ("frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_completion_tokens", "max_tokens",
                 "n", "presence_penalty", "seed", "stop", "stream", "stream_options", "temperature", "top_p")
CHAT_BODIES = {
    "all-nulls": {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}],
                  **dict.fromkeys(CHAT_NULLABLE)},
    "all-omitted": {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}]},
    "control-logit-bias-beyond-100": {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}],
                                      "logit_bias": {"13": 150}},
}
"""Chat bodies as the gateway forwards them, byte for byte."""


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> Judged:
    # The launcher hands vLLM the materialised model directory, so it exists here too.
    model_dir = tmp_path_factory.mktemp("model")
    traffic_dir = tmp_path_factory.mktemp("adapter-traffic")
    traffic = adapter_traffic(traffic_dir)
    argvs = {case_id: case.argv(model_dir) for case_id, case in CASES.items()}
    argvs |= {case_id: case.argv(model_dir) for case_id, (case, _) in OVERRIDES.items()}
    argvs |= {f"control-{name}": build(model_dir) for name, build in NEGATIVE_CONTROLS.items()}
    gateway_body = traffic.gateway_load.body
    loads = {
        "gateway": as_judged(traffic.gateway_load),
        "sidecar": as_judged(traffic.sidecar_load),
        "control-path-instead-of-lora-path": {
            "body": {"lora_name": gateway_body["lora_name"], "path": gateway_body["lora_path"]},
            "content_type": "application/json",
        },
        "control-form-encoded": {"body": gateway_body, "content_type": "application/x-www-form-urlencoded"},
    }
    verdicts = run_with_vllm("tests.support.vllm_judge", {
        "serve_argvs": list(argvs.values()),
        "report": REPORTED,
        "load_requests": list(loads.values()),
        "unload_requests": [as_judged(traffic.sidecar_unload)],
        "chat_requests": list(CHAT_BODIES.values()),
    })
    return Judged(model_dir, verdicts["lora_ranks"], dict(zip(argvs, verdicts["serve_argvs"], strict=True)),
                  traffic, traffic_dir / "shared-cache", dict(zip(loads, verdicts["load_requests"], strict=True)),
                  verdicts["unload_requests"], dict(zip(CHAT_BODIES, verdicts["chat_requests"], strict=True)),
                  {name: tuple(answer) for name, answer in verdicts["error_bodies"].items()})


def as_judged(request: Received) -> dict:
    return {"body": request.body, "content_type": request.content_type}


# -- the command line ----------------------------------------------------------------------


def test_the_launchers_rank_list_is_vllms(judged: Judged):
    assert list(VLLM_LORA_RANKS) == judged.vllm_ranks


@pytest.mark.parametrize("case_id", CASES)
def test_vllm_parses_every_command_line_into_what_the_spec_meant(judged: Judged, case_id: str):
    verdict = judged.argv_verdicts[case_id]
    assert verdict["ok"], verdict["error"]
    expected = expected_values(CASES[case_id], judged.model_dir, judged.vllm_ranks)
    assert {name: verdict["values"][name] for name in expected} == expected
    # What vLLM's LoRAConfig made of it: no bound was adjusted on the way.
    assert verdict["lora_config"] == {name: expected[name] for name in ("max_loras", "max_cpu_loras", "max_lora_rank")}
    # vLLM would import the serving token guard and add it as a class (app.add_middleware).
    assert verdict["middlewares"] == {GUARD_MIDDLEWARE: "class"}


@pytest.mark.parametrize("case_id", OVERRIDES)
def test_engine_args_override_the_launchers_flags(judged: Judged, case_id: str):
    """Whatever --max-loras engine_args end with, vLLM's LoRAConfig accepts the CPU cache
    the launcher sized for it."""
    verdict = judged.argv_verdicts[case_id]
    assert verdict["ok"], verdict["error"]
    expected = OVERRIDES[case_id][1]
    assert (verdict["values"]["max_loras"], verdict["values"]["max_cpu_loras"]) == expected
    assert (verdict["lora_config"]["max_loras"], verdict["lora_config"]["max_cpu_loras"]) == expected
    assert verdict["middlewares"] == {GUARD_MIDDLEWARE: "class"}


def test_vllm_rejects_what_it_does_not_know(judged: Judged):
    """Negative controls: the judge can fail, and for the reasons the launcher guards against."""
    unknown = judged.argv_verdicts["control-unrecognized-flag"]
    assert not unknown["ok"] and "unrecognized arguments: --no-such-flag" in unknown["error"]
    unrounded = judged.argv_verdicts["control-unrounded-rank"]
    assert not unrounded["ok"] and "--max-lora-rank: invalid choice: 200" in unrounded["error"]
    # What the launcher produced before it read engine_args' --max-loras.
    small_cache = judged.argv_verdicts["control-cpu-cache-below-max-loras"]
    assert not small_cache["ok"] and "max_cpu_loras (8) must be >= max_loras (16)" in small_cache["error"]
    # --middleware is resolved as vLLM resolves it when it builds the app.
    missing = judged.argv_verdicts["control-middleware-not-there"]
    assert not missing["ok"] and "has no attribute 'NoSuchMiddleware'" in missing["error"]
    not_one = judged.argv_verdicts["control-middleware-not-a-middleware"]
    assert not not_one["ok"] and "Must be a function or a class" in not_one["error"]


# -- runtime adapter loads and unloads -----------------------------------------------------


def test_the_gateways_load_is_one_vllm_accepts(judged: Judged):
    traffic = judged.traffic
    assert traffic.gateway_load.path == "/v1/load_lora_adapter"
    verdict = judged.load_verdicts["gateway"]
    assert verdict["ok"], verdict["error"]
    assert verdict["ignored_keys"] == []
    assert (verdict["validated"]["lora_name"], verdict["validated"]["lora_path"]) == (
        traffic.adapter.name, traffic.adapter.path)


def test_the_sidecars_load_hands_vllm_its_local_copy(judged: Judged):
    traffic = judged.traffic
    assert traffic.sidecar_load.path == "/v1/load_lora_adapter"
    verdict = judged.load_verdicts["sidecar"]
    assert verdict["ok"], verdict["error"]
    assert verdict["ignored_keys"] == []
    assert verdict["validated"]["lora_name"] == traffic.adapter.name
    copy = Path(verdict["validated"]["lora_path"])
    assert copy.parent == judged.sidecar_cache / "adapters" and (copy / "adapter_config.json").is_file()


def test_the_sidecars_unload_is_one_vllm_accepts(judged: Judged):
    traffic = judged.traffic
    assert traffic.sidecar_unload.path == "/v1/unload_lora_adapter"
    [verdict] = judged.unload_verdicts
    assert verdict["ok"], verdict["error"]
    assert verdict["ignored_keys"] == []
    assert verdict["validated"]["lora_name"] == traffic.adapter.name


def test_vllm_rejects_a_load_it_cannot_read(judged: Judged):
    """Negative controls for the bodies: a misnamed field and a body not sent as JSON."""
    misnamed = judged.load_verdicts["control-path-instead-of-lora-path"]
    assert not misnamed["ok"] and "lora_path\n  Field required" in misnamed["error"]
    form = judged.load_verdicts["control-form-encoded"]
    assert not form["ok"] and "Only 'application/json' is allowed" in form["error"]


# -- vLLM's app, built from the launcher's command line -------------------------------------

SAGEMAKER_LOAD = {"name": "sm-adapter", "src": "/cache/adapters/sm"}
V1_LOAD = {"lora_name": "v1-adapter", "lora_path": "/cache/adapters/v1"}
UNAUTHORIZED = '{"error":"Unauthorized"}'


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: dict | None = None


OPEN_CALLS = {"health": Call("GET", "/health"), "metrics": Call("GET", "/metrics")}
# The routes that load or unload adapters, SageMaker's first (outside vLLM's GUARDED_PREFIX),
# and SageMaker's inference route, which is outside it too.
GUARDED_CALLS = {
    "sagemaker-load": Call("POST", "/adapters", SAGEMAKER_LOAD),
    "sagemaker-unload": Call("DELETE", f"/adapters/{SAGEMAKER_LOAD['name']}"),
    "v1-load": Call("POST", "/v1/load_lora_adapter", V1_LOAD),
    "invocations": Call("POST", "/invocations", {"prompt": "hello"}),
}
AUTHORIZATIONS = {"none": {}, "wrong-token": bearer("not-the-token"), "token": bearer(SERVING_TOKEN)}
# In order: the open routes without credentials, then each guarded call without the
# token, with a wrong one, and with the deployment's.
CALLS = [(f"{name}/none", call, {}) for name, call in OPEN_CALLS.items()] + [
    (f"{name}/{authorization}", call, headers)
    for authorization, headers in AUTHORIZATIONS.items()
    for name, call in GUARDED_CALLS.items()
]


@dataclass
class Probed:
    apps: dict[str, dict]

    def response(self, app: str, call: str) -> dict:
        [index] = [i for i, (name, _, _) in enumerate(CALLS) if name == call]
        return self.apps[app]["responses"][index]

    def status(self, app: str, call: str) -> int:
        return self.response(app, call)["status"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Probed:
    """vLLM's app three times, from the argv and environment the launcher hands vLLM in a
    Pod (`__main__` execs vllm_command's argv with api_key_env and the Pod's environment,
    which holds the serving token): as is; without our --middleware (the negative control:
    only vLLM's own API key); and without the serving token in the environment."""
    model_dir = tmp_path_factory.mktemp("model")
    argv, launcher_env = vllm_command(serving_spec(gpu_count=1), model_dir, {}, "0.0.0.0")
    env = {**launcher_env, **api_key_env(SERVING_TOKEN), TOKEN_ENV: SERVING_TOKEN}
    at = argv.index("--middleware")
    assert argv[at + 1] == GUARD_MIDDLEWARE
    apps = {
        "guarded": {"argv": argv, "env": env},
        "control-unguarded": {"argv": argv[:at] + argv[at + 2:], "env": env},
        "no-token": {"argv": argv, "env": {**env, TOKEN_ENV: None}},
    }
    answer = run_with_vllm("tests.support.vllm_app_probe", {
        "apps": apps,
        "requests": [{"method": call.method, "path": call.path, "headers": headers, "json": call.body}
                     for _, call, headers in CALLS],
    })
    for name in ("guarded", "control-unguarded"):
        assert answer[name]["built"], answer[name]["error"]
    return Probed(answer)


def test_vllms_app_mounts_the_adapter_routes_with_our_middleware_outermost(probed: Probed):
    for app in ("guarded", "control-unguarded"):
        routes = set(probed.apps[app]["routes"])
        assert {"POST /adapters", "DELETE /adapters/{adapter_name}", "POST /v1/load_lora_adapter",
                "POST /invocations", "GET /health", "GET /metrics"} <= routes
    # vLLM's API-key middleware is there in both; ours wraps all of vLLM's.
    guarded = probed.apps["guarded"]["middlewares"]
    assert guarded[0] == "ServingTokenMiddleware" and "AuthenticationMiddleware" in guarded
    assert probed.apps["control-unguarded"]["middlewares"] == guarded[1:]


def test_without_the_token_every_adapter_route_of_vllms_app_is_401(probed: Probed):
    for authorization in ("none", "wrong-token"):
        for name in GUARDED_CALLS:
            response = probed.response("guarded", f"{name}/{authorization}")
            assert (response["status"], response["body"]) == (401, UNAUTHORIZED), (name, authorization)
    # Nothing reached the engine but the loads made with the token.
    assert probed.apps["guarded"]["engine_add_lora"] == [SAGEMAKER_LOAD["name"], V1_LOAD["lora_name"]]


def test_with_the_token_the_calls_reach_vllms_handlers(probed: Probed):
    assert probed.response("guarded", "sagemaker-load/token") == {
        "status": 200, "body": f"Adapter {SAGEMAKER_LOAD['name']} registered"}
    assert probed.response("guarded", "sagemaker-unload/token") == {
        "status": 200, "body": f"Adapter {SAGEMAKER_LOAD['name']} unregistered"}
    assert probed.response("guarded", "v1-load/token") == {
        "status": 200, "body": f"Success: LoRA adapter '{V1_LOAD['lora_name']}' added successfully."}
    # The handler ran (and found no chat serving in this engine-less app state): not 401.
    assert probed.status("guarded", "invocations/token") == 500
    assert probed.apps["guarded"]["loaded"] == [V1_LOAD["lora_name"]]


def test_probes_and_scrapes_need_no_token(probed: Probed):
    for app in ("guarded", "control-unguarded"):
        assert probed.status(app, "health/none") == 200
        metrics = probed.response(app, "metrics/none")
        assert metrics["status"] == 200 and metrics["body"].startswith("# HELP")


def test_negative_control_vllms_own_api_key_leaves_the_sagemaker_routes_open(probed: Probed):
    """The gap the middleware closes: with only VLLM_API_KEY, a caller without the token
    loads and unloads adapters through SageMaker's routes and reaches /invocations, while
    vLLM does refuse the /v1 load."""
    assert probed.response("control-unguarded", "sagemaker-load/none") == {
        "status": 200, "body": f"Adapter {SAGEMAKER_LOAD['name']} registered"}
    assert probed.status("control-unguarded", "sagemaker-unload/none") == 200
    assert probed.status("control-unguarded", "invocations/none") == 500
    assert probed.response("control-unguarded", "v1-load/none") == {"status": 401, "body": UNAUTHORIZED}
    # The engine loaded the adapter for the caller without a token and the one with a wrong one.
    assert probed.apps["control-unguarded"]["engine_add_lora"] == [SAGEMAKER_LOAD["name"]] * 3 + [V1_LOAD["lora_name"]]


def test_vllm_does_not_start_without_the_serving_token(probed: Probed):
    refused = probed.apps["no-token"]
    assert not refused["built"] and refused["error"].startswith(f"MissingServingToken: {TOKEN_ENV} is not set")


# -- chat requests the gateway forwards, and vLLM's errors it maps -------------------------


def test_vllm_reads_every_null_the_gateway_forwards_as_the_default(judged: Judged):
    """The gateway forwards nulls as sent (tuneforge.gateway.openai_protocol.ChatCompletionRequest):
    vLLM must take each, and sample exactly as if it had been left out."""
    assert parse_request(json.dumps(CHAT_BODIES["all-nulls"]).encode()).model == SERVED_NAME
    nulls, omitted = judged.chat_verdicts["all-nulls"], judged.chat_verdicts["all-omitted"]
    assert nulls["ok"] and omitted["ok"], (nulls, omitted)
    assert nulls["sampling"] == omitted["sampling"]
    assert (nulls["sampling"]["n"], nulls["sampling"]["temperature"], nulls["sampling"]["stop"]) == (1, 1.0, [])


def test_the_gateway_refuses_what_vllm_would_quietly_change(judged: Judged):
    """vLLM clamps a logit_bias beyond +-100 where OpenAI refuses it, so the gateway checks it."""
    clamped = judged.chat_verdicts["control-logit-bias-beyond-100"]
    assert clamped["ok"] and clamped["sampling"]["logit_bias"] == {"13": 100.0}
    with pytest.raises(OpenAIError) as exc:
        parse_request(json.dumps(CHAT_BODIES["control-logit-bias-beyond-100"]).encode())
    assert (exc.value.status, exc.value.param) == (400, "logit_bias")


@pytest.mark.parametrize(("name", "expected"), [
    ("five-stops", (400, "invalid_request_error", "invalid_request", "stop")),
    ("bad-temperature", (400, "invalid_request_error", "invalid_request", "temperature")),
    ("unknown-model", (404, "invalid_request_error", "model_not_found", None)),
    ("unprocessable", (422, "invalid_request_error", "invalid_request", "messages")),
    ("queue-full", (503, "server_error", "engine_overloaded", None)),
    ("retryable", (503, "server_error", "engine_overloaded", None)),
    ("generation-failed", (502, "server_error", "upstream_error", None)),
    ("not-implemented", (400, "invalid_request_error", "unsupported_by_engine", None)),
])
def test_vllms_own_error_bodies_reach_clients_in_openais_terms(judged: Judged, name: str, expected: tuple):
    """vLLM names an exception (or an HTTP phrase) as `type` and the status as an integer
    `code`; the client gets OpenAI's type for the status, a string code and vLLM's message."""
    status, body = judged.error_bodies[name]
    assert isinstance(body["error"]["code"], int) and not body["error"]["type"].endswith("_error")
    error = upstream_error(status, json.dumps(body).encode())
    assert (error.status, error.type, error.code, error.param) == expected
    assert body["error"]["message"] in error.message
