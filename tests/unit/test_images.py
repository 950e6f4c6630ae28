"""The three Dockerfiles cannot be built here (no container engine), so what can drift
silently is checked statically: each image starts from its pinned base, installs
tuneforge with the extras it needs *and their dependencies* (so pyproject.toml stays the
one home of every version, and the set installed is the one
test_dependency_resolution.py resolves), restates no version of its own, and its
entrypoint is one of the project's console scripts. Each rule is also fed a Dockerfile
broken in that one way, so a rule that cannot fail fails here.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"(?<![\w./-])([A-Za-z][\w.-]*)(?:\[[\w,-]+\])?==([\w.+-]+)")
FROM = re.compile(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", re.M)
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
VLLM_VERSION = next(PIN.match(r).group(2) for r in PYPROJECT["optional-dependencies"]["vllm"])


@dataclass(frozen=True)
class Image:
    dockerfile: str
    base: str
    project_install: str
    """How the Dockerfile installs tuneforge: its extras, with their dependencies."""
    entrypoint: str


IMAGES = [
    Image("operator/Dockerfile", "python:3.12.12-slim-bookworm", "pip install '.[operator]'", "tuneforge"),
    Image("trainer-image/Dockerfile", "python:3.12.12-slim-bookworm", "pip install '.[trainer,qlora]'",
          "tuneforge-train"),
    Image("inference-image/Dockerfile", f"vllm/vllm-openai:v{VLLM_VERSION}",
          "pip install --no-cache-dir '/src/tuneforge[inference,vllm]'", "tuneforge-serve"),
]


def image_problems(image: Image, text: str) -> list[str]:
    problems = []
    stages = {match.group(1) for match in re.finditer(r"^FROM\s.*\sAS\s+(\S+)", text, re.M | re.I)}
    bases = [base for base in FROM.findall(text) if base not in stages]
    if not bases or any(base != image.base for base in bases):
        problems.append(f"base image is {bases}, not {image.base}")
    for name, version in PIN.findall(text):
        problems.append(f"pins {name}=={version} itself; versions live in pyproject.toml")
    if "--no-deps" in text:
        problems.append("installs with --no-deps, so what runs is not the set pyproject.toml resolves to")
    if image.project_install not in text:
        problems.append(f"does not install tuneforge with `{image.project_install}`")
    for extra in re.findall(r"\[([\w,-]+)\]'", image.project_install)[0].split(","):
        if extra not in PYPROJECT["optional-dependencies"]:
            problems.append(f"installs the extra {extra!r}, which pyproject.toml does not define")
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.M)
    if not entrypoint or entrypoint.group(1) != image.entrypoint:
        problems.append(f"entrypoint is not {image.entrypoint}")
    if image.entrypoint not in PYPROJECT["scripts"]:
        problems.append(f"{image.entrypoint} is not a console script of pyproject.toml")
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not user or not user[-1].isdigit() or int(user[-1]) == 0:
        problems.append(f"the final USER is {user[-1:] or 'root'}, not a numeric non-root uid")
    return problems


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.dockerfile)
def test_dockerfile_installs_what_pyproject_resolves(image: Image) -> None:
    assert image_problems(image, (REPO / image.dockerfile).read_text()) == []


def _breakages(image: Image) -> list[tuple[str, str, str]]:
    """(what, old, new) replacements, each of which must make the image's text fail."""
    extras = re.search(r"\[([\w,-]+)\]", image.project_install).group(0)
    return [("base tag drifts", f"FROM {image.base}", f"FROM {image.base.partition(':')[0]}:latest"),
            ("dependencies skipped", image.project_install, image.project_install.replace("install", "install --no-deps")),
            ("extras dropped", image.project_install, image.project_install.replace(extras, "")),
            ("a version restated", "ENTRYPOINT", "RUN pip install torch==2.0.0\nENTRYPOINT"),
            ("runs as root", "ENTRYPOINT", "USER root\nENTRYPOINT"),
            ("entrypoint changes", f'ENTRYPOINT ["{image.entrypoint}"]', 'ENTRYPOINT ["python"]')]


BREAKAGES = [(image, old, new, f"{image.dockerfile}: {what}") for image in IMAGES for what, old, new in _breakages(image)]


@pytest.mark.parametrize("image,old,new", [b[:3] for b in BREAKAGES], ids=[b[3] for b in BREAKAGES])
def test_each_rule_can_fail(image: Image, old: str, new: str) -> None:
    text = (REPO / image.dockerfile).read_text()
    assert old in text
    assert image_problems(image, text.replace(old, new, 1))
