"""Fixtures for the trainer tests: a thread cap and the tiny model's tokenizer (datasets
and run specs are in tests/support/trainer_runs.py).

The machine running the tests is small and shared, so every trainer test uses at most
two threads.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
