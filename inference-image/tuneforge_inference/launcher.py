"""Turns a ServingSpec into the `vllm serve` command line, then execs vLLM.

`vllm_command` is pure so the argv can be unit-tested without vLLM or a GPU. The flag
names were checked against vLLM's own argument definitions (`EngineArgs` in
vllm/engine/arg_utils.py, `LoRAConfig` in vllm/config/lora.py, `FrontendArgs` in
vllm/entrypoints/openai/cli_args.py) for the version pinned in pyproject's `vllm` extra:

- `--max-lora-rank` only accepts the values in `VLLM_LORA_RANKS`, so the spec's bound is
  rounded up to the next accepted value;
- `--max-cpu-loras` must be >= `--max-loras`;
- `--lora-modules` takes all adapters after ONE flag (nargs="+"; a repeated flag replaces
  the earlier list), and each in JSON form, which unlike `name=path` survives a path with
  '=' or ',' in it and carries `base_model_name` for /v1/models;
- runtime `/v1/load_lora_adapter` exists only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tuneforge.contracts import ServingSpec

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
RUNTIME_LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


class LaunchError(Exception):
    """A spec vLLM cannot serve as asked."""


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that is >= `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise LaunchError(f"max_adapter_rank {rank} exceeds vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def vllm_command(
    spec: ServingSpec, model_path: Path, adapter_paths: dict[str, Path], host: str
) -> tuple[list[str], dict[str, str]]:
    """The argv and the extra environment for `vllm serve` of this spec.

    `adapter_paths` maps each adapter name in `spec.adapters` to its local directory (vLLM
    reads adapters from disk). `spec.engine_args` go last, so an operator can override any
    flag set here (argparse keeps the last value).
    """
    if spec.gpu_count < 1:
        raise LaunchError("the vllm engine needs gpu_count >= 1; use engine 'cpu' without GPUs")
    missing = [a.name for a in spec.adapters if a.name not in adapter_paths]
    if missing:
        raise LaunchError(f"no local path for adapter(s) {', '.join(missing)}")
    max_loras = spec.max_adapters
    argv = [
        "vllm",
        "serve",
        str(model_path),
        "--served-model-name",
        spec.served_model_name,
        "--host",
        host,
        "--port",
        str(spec.port),
        "--tensor-parallel-size",
        str(spec.gpu_count),
        "--gpu-memory-utilization",
        str(spec.gpu_memory_utilization),
        "--enable-lora",
        "--max-loras",
        str(max_loras),
        "--max-lora-rank",
        str(vllm_lora_rank(spec.max_adapter_rank)),
        "--max-cpu-loras",
        str(max(max_loras, len(spec.adapters))),
    ]
    if spec.max_model_length is not None:
        argv += ["--max-model-len", str(spec.max_model_length)]
    if spec.adapters:
        argv.append("--lora-modules")
        argv += [
            json.dumps(
                {"name": a.name, "path": str(adapter_paths[a.name]), "base_model_name": spec.served_model_name},
                separators=(",", ":"),
            )
            for a in spec.adapters
        ]
    argv += spec.engine_args
    return argv, dict(RUNTIME_LORA_ENV)


def exec_vllm(argv: list[str], extra_env: dict[str, str]) -> None:
    """Replaces this process with vLLM, so signals and the exit code are vLLM's own."""
    executable = shutil.which(argv[0])
    if executable is None:
        raise LaunchError(f"{argv[0]!r} is not on PATH; the vllm engine runs in the vLLM image")
    os.execve(executable, argv, {**os.environ, **extra_env})
