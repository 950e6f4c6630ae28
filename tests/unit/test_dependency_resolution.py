"""Every extra of pyproject.toml installs on the platform the images run on.

uv's resolver targets linux x86_64 (manylinux 2.28, CPython 3.12 as in the images) without
installing anything, so a set of pins no image could install -- as when vLLM needs other
torch, transformers or fastapi versions than the CPU engine -- fails here rather than in
a Docker build. All extras are resolved at once: a solution for all of them is one for
each extra and each combination an image installs (the inference image `inference` +
`vllm`, the trainer `trainer` + `qlora`), and it is what makes the development
environment the tests run in hold the versions the images get. One resolution instead of
one per combination, because each costs the index's revalidation (about 15 s).
Needs the package index (or uv's cache of it).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXTRAS = sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
TARGET = ["--python-platform", "x86_64-manylinux_2_28", "--python-version", "3.12"]


def resolve(extras: list[str], pyproject: Path = REPO / "pyproject.toml") -> subprocess.CompletedProcess:
    uv = Path(sys.executable).parent / "uv"
    extra_args = [arg for extra in extras for arg in ("--extra", extra)]
    return subprocess.run([str(uv), "pip", "compile", str(pyproject), *extra_args, *TARGET, "--quiet", "--no-header"],
                          capture_output=True, text=True, timeout=300)


def test_every_extra_resolves_on_linux_x86_64() -> None:
    result = resolve(EXTRAS)
    assert result.returncode == 0, result.stderr
    assert "vllm==" in result.stdout and "torch==" in result.stdout


def test_a_conflicting_pin_is_reported(tmp_path: Path) -> None:
    """The conflict this test exists for: the CPU engine's torch against vLLM's."""
    text = (REPO / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([^"]+)"', text).group(0)
    broken = tmp_path / "pyproject.toml"
    broken.write_text(text.replace(torch_pin, '"torch==2.15.0"'))
    result = resolve(["inference", "vllm"], broken)
    assert result.returncode != 0
    assert "torch" in result.stderr
