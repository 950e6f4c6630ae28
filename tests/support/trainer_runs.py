"""Small datasets and run specs for the trainer tests and benchmarks.

The machine running the tests is small and shared, so the defaults keep sequences short
and training to two epochs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tuneforge.contracts import TrainingRun

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda sigma".split()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def echo_examples(n: int, seed: int = 0) -> list[dict]:
    """Chat examples where the assistant upper-cases the user's words (varied lengths)."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        records.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text.upper()}]})
    return records


def make_run(tmp_path: Path, model_dir: Path, training_file: Path, **overrides) -> TrainingRun:
    """A run spec as the operator writes it; a dict override merges into the default dict."""
    spec = {
        "job_id": "ftjob-test",
        "namespace": "team-a",
        "base_model": "tiny",
        "base_model_uri": str(model_dir),
        "training_file": str(training_file),
        "output_uri": str(tmp_path / "out"),
        "fine_tuned_model": "ft:tiny:team-a::ftjob-test",
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "max_seq_length": 64},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return TrainingRun.model_validate(spec)
