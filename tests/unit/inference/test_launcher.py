"""The `vllm serve` command line built from a ServingSpec (flag names checked against
vLLM's EngineArgs/LoRAConfig/FrontendArgs; see launcher.py)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from tuneforge.contracts import AdapterSource, Engine, ServingSpec

from tuneforge_inference.launcher import LaunchError, effective_max_loras, vllm_command, vllm_lora_rank
from tuneforge_inference.vllm_guard import ServingTokenMiddleware

MODEL = Path("/cache/models/smollm2")


def spec(**overrides) -> ServingSpec:
    fields = dict(deployment="d", namespace="ns", served_model_name="smollm2", base_model_uri="gguf://x/y.gguf",
                  engine=Engine.vllm, gpu_count=1)
    return ServingSpec(**{**fields, **overrides})


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_base_model_without_adapters():
    argv, env = vllm_command(spec(), MODEL, {}, "0.0.0.0")
    assert argv[:3] == ["vllm", "serve", str(MODEL)]
    assert flag(argv, "--served-model-name") == "smollm2"
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("0.0.0.0", "8000")
    assert flag(argv, "--tensor-parallel-size") == "1"
    assert flag(argv, "--gpu-memory-utilization") == "0.9"
    # Runtime adapters need LoRA on even when the spec lists none.
    assert "--enable-lora" in argv and "--lora-modules" not in argv
    assert (flag(argv, "--max-loras"), flag(argv, "--max-lora-rank"), flag(argv, "--max-cpu-loras")) == ("8", "64", "8")
    assert "--max-model-len" not in argv
    assert env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_NO_USAGE_STATS": "1"}


def test_adapters_tensor_parallel_and_context_length():
    adapters = [AdapterSource(name=f"ft-{i}", uri=f"s3://b/a{i}") for i in range(3)]
    paths = {a.name: Path(f"/cache/adapters/{a.name}") for a in adapters}
    argv, _ = vllm_command(
        spec(adapters=adapters, gpu_count=4, max_adapters=2, max_adapter_rank=20, max_model_length=4096,
             gpu_memory_utilization=0.5, port=9000),
        MODEL, paths, "10.0.0.7",
    )
    assert flag(argv, "--tensor-parallel-size") == "4"
    assert flag(argv, "--max-model-len") == "4096"
    assert flag(argv, "--max-lora-rank") == "32"
    # vLLM requires max_cpu_loras >= max_loras; every listed adapter must fit in the CPU cache.
    assert (flag(argv, "--max-loras"), flag(argv, "--max-cpu-loras")) == ("2", "3")
    # All modules follow ONE flag: a repeated --lora-modules replaces the earlier list.
    assert argv.count("--lora-modules") == 1
    start = argv.index("--lora-modules") + 1
    modules = [json.loads(item) for item in argv[start : start + 3]]
    assert modules == [{"name": a.name, "path": str(paths[a.name]), "base_model_name": "smollm2"} for a in adapters]


def test_engine_args_come_last_so_they_override():
    argv, _ = vllm_command(spec(engine_args=["--max-loras", "16", "--enforce-eager"]), MODEL, {}, "h")
    assert argv[-3:] == ["--max-loras", "16", "--enforce-eager"]


def test_vllm_is_told_to_guard_every_route_with_the_serving_token():
    engine_args = ["--middleware", "team.Extra"]
    argv, _ = vllm_command(spec(engine_args=engine_args), MODEL, {}, "h")
    # Once, before engine_args; --middleware appends, so an operator's own is added and ours stays.
    launchers, passed_through = argv[: -len(engine_args)], argv[-len(engine_args) :]
    assert launchers.count("--middleware") == 1 and passed_through == engine_args
    # The name is the class's import path, as vLLM resolves it (module, then attribute).
    module, _, name = flag(launchers, "--middleware").rpartition(".")
    assert getattr(importlib.import_module(module), name) is ServingTokenMiddleware


@pytest.mark.parametrize(
    ("max_adapters", "adapters", "engine_args", "expected"),
    [
        # (effective --max-loras, --max-cpu-loras)
        (8, 0, [], (8, 8)),
        (2, 3, [], (2, 3)),
        (8, 0, ["--max-loras", "16"], (16, 16)),
        (8, 0, ["--max-loras=32"], (32, 32)),
        (8, 0, ["--max_loras", "12"], (12, 12)),
        (8, 0, ["--max_loras=20", "--enforce-eager"], (20, 20)),
        # argparse keeps the last value.
        (8, 0, ["--max-loras", "16", "--max-loras=10"], (10, 10)),
        (8, 0, ["--max-loras=16", "--max-loras", "4"], (4, 8)),
        # Fewer than the spec's: the cache still holds max_adapters and every listed adapter.
        (8, 10, ["--max-loras", "4"], (4, 10)),
        (4, 2, ["--max-loras", "16"], (16, 16)),
        # Flags that merely start alike are not --max-loras (the launcher's own
        # --max-cpu-loras is the first one; vLLM would keep the operator's 99).
        (8, 0, ["--max-lora-rank", "64", "--max-cpu-loras", "99"], (8, 8)),
    ],
)
def test_the_cpu_cache_holds_the_effective_max_loras(max_adapters, adapters, engine_args, expected):
    sources = [AdapterSource(name=f"a{i}", uri=f"s3://b/a{i}") for i in range(adapters)]
    served = spec(max_adapters=max_adapters, adapters=sources, engine_args=engine_args)
    argv, _ = vllm_command(served, MODEL, {a.name: Path(f"/cache/{a.name}") for a in sources}, "h")
    assert (effective_max_loras(served), int(flag(argv, "--max-cpu-loras"))) == expected
    # vLLM's LoRAConfig check, against what argparse will keep.
    assert int(flag(argv, "--max-cpu-loras")) >= effective_max_loras(served)


@pytest.mark.parametrize("engine_args", [["--max-loras"], ["--max-loras", "many"], ["--max-loras="]])
def test_an_unreadable_max_loras_override_is_refused(engine_args):
    with pytest.raises(LaunchError, match="--max-loras"):
        vllm_command(spec(engine_args=engine_args), MODEL, {}, "h")


@pytest.mark.parametrize(("rank", "expected"), [(1, 1), (2, 8), (8, 8), (64, 64), (100, 128), (300, 320), (512, 512)])
def test_rank_rounds_up_to_a_value_vllm_accepts(rank, expected):
    assert vllm_lora_rank(rank) == expected


def test_impossible_specs_are_refused():
    with pytest.raises(LaunchError, match="gpu_count"):
        vllm_command(spec(gpu_count=0), MODEL, {}, "h")
    with pytest.raises(LaunchError, match="rank"):
        vllm_command(spec(max_adapter_rank=1024), MODEL, {}, "h")
    with pytest.raises(LaunchError, match="no local path"):
        vllm_command(spec(adapters=[AdapterSource(name="a", uri="s3://b/a")]), MODEL, {}, "h")
