"""The three Dockerfiles cannot be built here (no container engine), so what can drift
silently is checked statically: every version a Dockerfile pins is the one pyproject.toml
pins, the vLLM base image is the pinned vLLM, and each image's entrypoint is one of the
project's console scripts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "operator/Dockerfile": "tuneforge",
    "trainer-image/Dockerfile": "tuneforge-train",
    "inference-image/Dockerfile": "tuneforge-serve",
}
PIN = re.compile(r"(?<![\w./-])([A-Za-z][\w.-]*)(?:\[[\w,-]+\])?==([\w.+-]+)")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pyproject_pins() -> dict[str, str]:
    project = _pyproject()["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    pinned = (PIN.match(r) for r in requirements if not r.startswith(project["name"]))
    return {match.group(1).lower(): match.group(2) for match in pinned}


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILES))
def test_dockerfile_pins_match_pyproject(dockerfile: str) -> None:
    pins = _pyproject_pins()
    text = (REPO / dockerfile).read_text()
    found = PIN.findall(text)
    for name, version in found:
        assert name.lower() in pins, f"{dockerfile} pins {name}, which pyproject.toml does not"
        assert pins[name.lower()] == version, f"{dockerfile}: {name}=={version}, pyproject.toml: {pins[name.lower()]}"


def test_inference_image_is_the_pinned_vllm() -> None:
    base = re.search(r"^FROM vllm/vllm-openai:v(\S+)", (REPO / "inference-image/Dockerfile").read_text(), re.M)
    assert base and base.group(1) == _pyproject_pins()["vllm"]


@pytest.mark.parametrize("dockerfile,script", sorted(DOCKERFILES.items()))
def test_entrypoint_is_a_console_script(dockerfile: str, script: str) -> None:
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', (REPO / dockerfile).read_text(), re.M)
    assert entrypoint and entrypoint.group(1) == script
    assert script in _pyproject()["project"]["scripts"]
