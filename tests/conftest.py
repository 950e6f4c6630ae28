"""Session-wide fixtures shared by every test tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneforge.weights import SMOLLM2_GGUF_URI, build_tiny_model, materialize_base_model


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
