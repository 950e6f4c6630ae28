"""Turns a ServingSpec into the `vllm serve` command line, then execs vLLM.

`vllm_command` is pure so the argv can be unit-tested without vLLM or a GPU. The flag
names were checked against vLLM's own argument definitions (`EngineArgs` in
vllm/engine/arg_utils.py, `LoRAConfig` in vllm/config/lora.py, `FrontendArgs` in
vllm/entrypoints/openai/cli_args.py) for the version pinned in pyproject's `vllm` extra:

- `--max-lora-rank` only accepts the values in `VLLM_LORA_RANKS`, so the spec's bound is
  rounded up to the next accepted value;
- `--max-cpu-loras` must be >= `--max-loras` (vLLM's LoRAConfig refuses otherwise), and
  `spec.engine_args` may set `--max-loras` again (argparse keeps the last value), so the
  launcher sizes the CPU cache from the effective value, the last one given in either
  spelling vLLM accepts (`--max-loras N`, `--max-loras=N`, underscores for dashes);
- `--lora-modules` takes all adapters after ONE flag (nargs="+"; a repeated flag replaces
  the earlier list), and each in JSON form, which unlike `name=path` survives a path with
  '=' or ',' in it and carries `base_model_name` for /v1/models;
- runtime `/v1/load_lora_adapter` exists only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True,
  which vLLM documents as unsafe on an open port: tuneforge therefore always starts vLLM
  with the deployment's serving token as its API key (`VLLM_API_KEY`, read from the
  environment so it shows in no process list), which vLLM requires on every /v1 route,
  the load endpoints included;
- vLLM checks that key only under /v1, /v2, /inference and /cohere, while it also serves
  SageMaker's `POST /adapters` and `DELETE /adapters/{name}` (adapter loads and unloads
  once runtime updating is on), `/invocations` and more outside them: `--middleware`
  adds `vllm_guard.ServingTokenMiddleware`, which requires the same token on every route
  but /health and /metrics (see its module). `--middleware` appends, so engine_args can
  add middlewares but not remove this one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tuneforge.contracts import ServingSpec

from tuneforge_inference.vllm_guard import ServingTokenMiddleware

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_NO_USAGE_STATS": "1"}
"""Runtime adapter loads on (guarded, see the module docstring); usage statistics off: an
air-gapped cluster cannot send them, and vLLM would write their marker under ~/.config on
the read-only root filesystem."""
GUARD_MIDDLEWARE = f"{ServingTokenMiddleware.__module__}.{ServingTokenMiddleware.__qualname__}"
"""The import path `--middleware` takes: vLLM imports the module and adds the class."""
MAX_LORAS_FLAG = "--max-loras"


class LaunchError(Exception):
    """A spec vLLM cannot serve as asked."""


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that is >= `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise LaunchError(f"max_adapter_rank {rank} exceeds vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def effective_max_loras(spec: ServingSpec) -> int:
    """The `--max-loras` vLLM ends up with: the last one `spec.engine_args` gives (as
    vLLM's FlexibleArgumentParser reads flags: `--flag value` or `--flag=value`, `_` for
    `-` in the name), else the spec's `max_adapters`."""
    value: str | None = None
    args = spec.engine_args
    for i, arg in enumerate(args):
        name, equals, inline = arg.partition("=")
        if not name.startswith("--") or "--" + name[2:].replace("_", "-") != MAX_LORAS_FLAG:
            continue
        if equals:
            value = inline
        elif i + 1 < len(args):
            value = args[i + 1]
        else:
            raise LaunchError(f"engine_args end with {arg} and no value")
    if value is None:
        return spec.max_adapters
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"engine_args give {MAX_LORAS_FLAG} {value!r}, not an integer") from None


def vllm_command(
    spec: ServingSpec, model_path: Path, adapter_paths: dict[str, Path], host: str
) -> tuple[list[str], dict[str, str]]:
    """The argv and the extra environment for `vllm serve` of this spec.

    `adapter_paths` maps each adapter name in `spec.adapters` to its local directory (vLLM
    reads adapters from disk). `spec.engine_args` go last, so an operator can override any
    flag set here (argparse keeps the last value). `--max-cpu-loras` holds every listed
    adapter, the spec's `max_adapters` and the effective `--max-loras`, so an override
    of the latter still passes vLLM's check.
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
        str(max(max_loras, effective_max_loras(spec), len(spec.adapters))),
        "--middleware",
        GUARD_MIDDLEWARE,
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
    return argv, dict(VLLM_ENV)


def api_key_env(token: str | None) -> dict[str, str]:
    """The environment that makes vLLM require `token` on every /v1 route."""
    if not token:
        raise LaunchError("the vllm engine needs its deployment's serving token (TUNEFORGE_SERVING_TOKEN): "
                          "without it runtime adapter loads would be open to any caller")
    return {"VLLM_API_KEY": token}


def exec_vllm(argv: list[str], extra_env: dict[str, str]) -> None:
    """Replaces this process with vLLM, so signals and the exit code are vLLM's own."""
    executable = shutil.which(argv[0])
    if executable is None:
        raise LaunchError(f"{argv[0]!r} is not on PATH; the vllm engine runs in the vLLM image")
    os.execve(executable, argv, {**os.environ, **extra_env})
