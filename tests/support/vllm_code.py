"""vLLM's own Python code, importable in a subprocess, so tests can let vLLM judge what
tuneforge hands it without vLLM ever becoming a dependency of tuneforge or entering .venv.

vLLM is GPU-only and lives in the inference image's base. Its wheel is pure Python apart
from its CUDA kernels (the `*.so` files), and none of those is imported by what the tests
need: the `vllm serve` argument parser, `AsyncEngineArgs` and the request models. So the
wheel pinned in pyproject's `vllm` extra is unpacked without them into the cache, next to
the few third-party packages those imports need that .venv lacks, and `run_with_vllm`
puts that directory on PYTHONPATH of a child process only.

The cache follows hack/provision-*.sh: `$TUNEFORGE_CACHE`, else
`$XDG_CACHE_HOME/tuneforge`, else ~/.cache/tuneforge; this lives in `vllm-<version>/`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]

# What importing vllm.entrypoints.cli.serve (the `vllm serve` parser, AsyncEngineArgs) and
# vllm.entrypoints.serve.lora.protocol needs beyond .venv. Found by importing them with
# only the unpacked wheel on PYTHONPATH and adding the package of each ModuleNotFoundError
# until none was left; versions are those `uv pip compile` resolves for the `vllm` extra
# (`--python-platform x86_64-manylinux_2_28 --python-version 3.11`), and `uv pip compile`
# of this list with .venv's `uv pip freeze` as constraints adds nothing else, so .venv
# already satisfies their own requirements. oss-harmony provides the `openai_harmony`
# module (vLLM requires it, not openai-harmony). vllm.entrypoints.launchers.app.build_app
# (the API server app, tests.support.vllm_app_probe) also needs
# model-hosting-container-standards and prometheus-fastapi-instrumentator, the newest that
# vLLM 0.33.0's requirements allow; supervisor, which only the former's supervisor scripts
# import, is left out.
IMPORT_DEPENDENCIES = (
    "apache-tvm-ffi==0.1.11",
    "cachetools==8.0.2",
    "cbor2==6.3.0",
    "cloudpickle==3.1.3",
    "llguidance==1.7.6",
    "model-hosting-container-standards==0.1.16",
    "msgspec==0.23.0",
    "orjson==3.13.0",
    "oss-harmony==0.0.11",
    "partial-json-parser==0.2.1.1.post7",
    "pillow==13.0.0",
    "prometheus-fastapi-instrumentator==8.1.0",
    "py-cpuinfo==9.0.0",
    "pybase64==1.5.1",
    "pyzmq==27.3.0",
    "xgrammar==0.2.8",
)

COMPLETE_MARKER = ".provisioned.json"
"""Written last, holding what was provisioned: a directory without it (an interrupted
run) or with other contents (a changed pin) is rebuilt."""


def vllm_version() -> str:
    """The version pinned in pyproject's `vllm` extra, the one the inference image runs."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for line in pyproject["project"]["optional-dependencies"]["vllm"]:
        requirement = Requirement(line)
        if requirement.name == "vllm":
            [pin] = requirement.specifier
            if pin.operator != "==":
                raise ValueError(f"pyproject's vllm extra must pin one version, found {line!r}")
            return pin.version
    raise ValueError("pyproject's vllm extra names no vllm")


def cache_root() -> Path:
    if override := os.environ.get("TUNEFORGE_CACHE"):
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneforge"


def provision_vllm() -> Path:
    """The directory to put on PYTHONPATH: vLLM without its kernels, plus its import
    dependencies. Built once per machine (mostly a 336 MB download); later calls only read
    the marker. Parallel test processes wait on a lock instead of racing."""
    version = vllm_version()
    target = cache_root() / f"vllm-{version}"
    wanted = {"vllm": version, "dependencies": list(IMPORT_DEPENDENCIES)}
    if _provisioned(target) == wanted:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".vllm-{version}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if _provisioned(target) != wanted:
                _build(target, version)
                (target / COMPLETE_MARKER).write_text(json.dumps(wanted))
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return target


def _provisioned(target: Path) -> dict | None:
    try:
        return json.loads((target / COMPLETE_MARKER).read_text())
    except FileNotFoundError:
        return None


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def _build(target: Path, version: str) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    # Inside the target, so a run killed mid-way leaves nothing the rebuild does not remove.
    download = target / ".download"
    _pip("download", f"vllm=={version}", "--no-deps", "--only-binary=:all:", "--dest", str(download))
    [wheel] = download.glob("vllm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target, [name for name in archive.namelist() if not name.endswith(".so")])
    shutil.rmtree(download)
    _pip("install", "--no-deps", "--only-binary=:all:", "--target", str(target),
         *IMPORT_DEPENDENCIES)


def run_with_vllm(module: str, payload: Any, timeout_s: float = 600.0) -> Any:
    """Runs `python -m <module>` (a module of this repository) with vLLM importable,
    `payload` as JSON on stdin; returns the JSON of its last line on stdout.

    VLLM_TARGET_DEVICE=cpu keeps vLLM's platform detection from probing for CUDA (whose
    kernels are not there); vLLM logs to stdout by default, so it is sent to stderr to
    keep the answer readable; HF_HUB_OFFLINE=1 keeps any model lookup off the network.
    """
    python_path = [str(provision_vllm()), str(REPO)]
    if inherited := os.environ.get("PYTHONPATH"):
        python_path.append(inherited)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(python_path),
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run([sys.executable, "-m", module], input=json.dumps(payload), capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"python -m {module} with vLLM exited {result.returncode}:\n{result.stderr[-5000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
