"""Fixtures for the batch runner tests: a loopback upstream, the runner's environment, and a
batch laid out in tmp_path (helpers in tests/support/batches.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.config import settings

from tests.support.batches import API_KEY, MODEL, BatchFiles
from tests.support.openai_upstream import UpstreamConfig, serve_in_thread


@pytest.fixture(autouse=True)
def _batch_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The API key the runner reads, and a termination log it may write, per test."""
    monkeypatch.setenv("TUNEFORGE_BATCH_API_KEY", API_KEY)
    monkeypatch.setenv("TUNEFORGE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    settings.cache_clear()
    yield
    settings.cache_clear()


@pytest.fixture
def upstream():
    with serve_in_thread(UpstreamConfig(api_key=API_KEY, models=[MODEL])) as running:
        yield running


@pytest.fixture
def batch(tmp_path: Path) -> BatchFiles:
    return BatchFiles(tmp_path)
