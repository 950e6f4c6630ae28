"""Session-wide fixtures shared by every test tier, and how the tiers share the workers.

`make test` runs pytest-xdist workers (`-n auto --dist loadgroup`). The end-to-end tests
share one local platform and the integration tests one control plane per worker; each of
those tiers is a group that runs whole in one worker, beside the other tier, while the unit
tests spread over every worker. Most of an end-to-end test's time is spent waiting on Pods,
so the unit tests' CPU work fills it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneforge.weights import SMOLLM2_GGUF_URI, build_tiny_model, materialize_base_model

TESTS = Path(__file__).parent
GROUPED_TIERS = ("e2e", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0]
        if tier in GROUPED_TIERS:
            item.add_marker(pytest.mark.xdist_group(tier))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct as a Hugging Face directory.

    Materialised into the persistent cache (`TUNEFORGE_CACHE_DIR`, default
    ~/.cache/tuneforge), so only the first run on a machine pays for dequantizing the GGUF.
    """
    return materialize_base_model(SMOLLM2_GGUF_URI)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SmolLM2-shaped model (real tokenizer and chat template), built once."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server on loopback for the whole session (see tests.support.s3)."""
    from tests.support.s3 import s3_server

    with s3_server() as endpoint:
        yield endpoint
