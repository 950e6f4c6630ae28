"""Session-wide fixtures shared by every test tier, and how the tiers share the workers.

`make test` runs pytest-xdist workers (`-n auto`). The end-to-end tests share one local
platform and the integration tests one control plane per worker; each of those tiers is
one unit of work that runs whole in one worker, beside the other tier, while the unit test
modules spread over every worker. Most of an end-to-end test's time is spent waiting on Pods,
so the unit tests' CPU work fills it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneforge.weights import SMOLLM2_GGUF_URI, build_tiny_model, materialize_base_model

GROUPED_TIERS = ("e2e", "integration")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's scope scheduling with each grouped tier as one scope and a module as the
    scope of a unit test, so module fixtures are built once. (xdist's own split, at the last
    `::`, would cut a parameter id such as `ft:base:team::ftjob-1` and move that test away
    from its module.)"""
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            parts = nodeid.split("/", 2)
            if len(parts) == 3 and parts[0] == "tests" and parts[1] in GROUPED_TIERS:
                return parts[1]
            return nodeid.split("::", 1)[0]

    return TierScheduling(config, log)


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
