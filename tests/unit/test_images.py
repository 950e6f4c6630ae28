"""The three Dockerfiles cannot be built here (no container engine), so what can drift
silently is checked statically: each image starts from its pinned base, installs every
package it needs at the version pyproject.toml pins (and pins nothing pyproject does not),
and its entrypoint is one of the project's console scripts.

pyproject.toml is the one home of the versions; the Dockerfiles repeat them because an
image that installs with --no-deps cannot read them from there. Each rule is also fed a
Dockerfile with the pin removed or altered, so a rule that cannot fail fails here.
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


def _pins(requirements: list[str]) -> dict[str, str]:
    pinned = (PIN.match(r) for r in requirements if not r.startswith(PYPROJECT["name"]))
    return {match.group(1).lower(): match.group(2) for match in pinned if match}


GROUND_FLOOR_PINS = _pins(PYPROJECT["dependencies"])
EXTRA_PINS = {extra: _pins(requirements) for extra, requirements in PYPROJECT["optional-dependencies"].items()}
PYPROJECT_PINS = {name: version for pins in [GROUND_FLOOR_PINS, *EXTRA_PINS.values()] for name, version in pins.items()}

VLLM_IMAGE_SHIPS = {"pydantic", "httpx", "torch", "transformers", "safetensors", "fastapi", "uvicorn",
                    "prometheus-client"}
"""What the vLLM base image already carries, so the inference image leaves them to it: pip
replacing vLLM's torch would break the GPU engine."""


@dataclass(frozen=True)
class Image:
    dockerfile: str
    base: str
    packages: frozenset[str]
    """Installed by name, each at pyproject.toml's version."""
    project_install: str
    """How the Dockerfile installs tuneforge itself."""
    entrypoint: str


IMAGES = [
    Image("operator/Dockerfile", "python:3.12.12-slim-bookworm", frozenset(),
          # With its dependencies: the ground floor and the operator extra come at pyproject's pins.
          "pip install '.[operator]'", "tuneforge"),
    Image("trainer-image/Dockerfile", "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
          frozenset({*GROUND_FLOOR_PINS, *EXTRA_PINS["trainer"], *EXTRA_PINS["qlora"]}),
          "pip install --no-deps .", "tuneforge-train"),
    Image("inference-image/Dockerfile", f"vllm/vllm-openai:v{EXTRA_PINS['vllm']['vllm']}",
          frozenset({*GROUND_FLOOR_PINS, *EXTRA_PINS["inference"]} - VLLM_IMAGE_SHIPS),
          "pip install --no-cache-dir --no-deps /src/tuneforge", "tuneforge-serve"),
]


def image_problems(image: Image, text: str) -> list[str]:
    problems = []
    stages = {match.group(1) for match in re.finditer(r"^FROM\s.*\sAS\s+(\S+)", text, re.M | re.I)}
    bases = [base for base in FROM.findall(text) if base not in stages]
    if not bases or any(base != image.base for base in bases):
        problems.append(f"base image is {bases}, not {image.base}")
    pinned = {name.lower(): version for name, version in PIN.findall(text)}
    for name in sorted(image.packages - pinned.keys()):
        problems.append(f"{name} is not installed at a pinned version")
    for name, version in sorted(pinned.items()):
        if name not in PYPROJECT_PINS:
            problems.append(f"pins {name}, which pyproject.toml does not")
        elif PYPROJECT_PINS[name] != version:
            problems.append(f"{name}=={version}, pyproject.toml pins {PYPROJECT_PINS[name]}")
    if image.project_install not in text:
        problems.append(f"does not install tuneforge with `{image.project_install}`")
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.M)
    if not entrypoint or entrypoint.group(1) != image.entrypoint:
        problems.append(f"entrypoint is not {image.entrypoint}")
    if image.entrypoint not in PYPROJECT["scripts"]:
        problems.append(f"{image.entrypoint} is not a console script of pyproject.toml")
    return problems


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.dockerfile)
def test_dockerfile_carries_its_pins(image: Image) -> None:
    assert image_problems(image, (REPO / image.dockerfile).read_text()) == []


def _loosened(project_install: str) -> str:
    """The operator image without the extra that carries its pins; the others without
    --no-deps, so pip would resolve over what the image installs (or its base ships)."""
    return project_install.replace("'.[operator]'", ".").replace(" --no-deps", "")


def _breakages(image: Image) -> list[tuple[str, str, str]]:
    """(what, old, new) replacements, each of which must make the image's text fail."""
    breakages = [("base tag drifts", f"FROM {image.base}", f"FROM {image.base.partition(':')[0]}:latest"),
                 ("tuneforge install loosened", image.project_install, _loosened(image.project_install)),
                 ("entrypoint changes", f'ENTRYPOINT ["{image.entrypoint}"]', 'ENTRYPOINT ["python"]')]
    for name in sorted(image.packages):
        pin = f"{name}=={PYPROJECT_PINS[name]}"
        breakages += [(f"{name} pin removed", pin, ""), (f"{name} unpinned", pin, name),
                      (f"{name} drifts", pin, f"{name}=={PYPROJECT_PINS[name]}.1")]
    return breakages


BREAKAGES = [(image, old, new, f"{image.dockerfile}: {what}") for image in IMAGES for what, old, new in _breakages(image)]


@pytest.mark.parametrize("image,old,new", [b[:3] for b in BREAKAGES], ids=[b[3] for b in BREAKAGES])
def test_each_pin_is_required(image: Image, old: str, new: str) -> None:
    text = (REPO / image.dockerfile).read_text()
    assert old in text
    assert image_problems(image, text.replace(old, new))


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.dockerfile)
def test_a_pin_pyproject_does_not_have_is_reported(image: Image) -> None:
    text = (REPO / image.dockerfile).read_text().replace("ENTRYPOINT", "RUN pip install left-pad==1.0\nENTRYPOINT", 1)
    assert image_problems(image, text)
