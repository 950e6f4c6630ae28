"""Resolves `auto` hyperparameters once the dataset size is known.

The rules (also in docs/trainer.md) follow OpenAI's published behaviour where there is one:

- `batch_size` (examples per optimizer step): 0.2% of the training examples, rounded down,
  clamped to [1, 256]. Small datasets get small batches, so they still see enough steps.
- `n_epochs`: 3 by default; when `3 * n_examples` is below 100 examples seen, more epochs
  so training sees at least ~100 examples (at most 25 epochs); when it is above 25,000,
  fewer epochs so training sees about 25,000 examples (at least 1 epoch). This is OpenAI's
  heuristic: tiny datasets need repetition, large ones do not.
- `learning_rate_multiplier`: scales the LoRA base learning rate of 2e-4. `auto` is
  sqrt(batch_size / 8) clamped to [0.5, 2.0]: the square-root rule for Adam keeps the
  update noise similar as the batch grows, and the clamp keeps tiny and huge batches sane.
- warmup steps are `warmup_steps` when given (at most `total_steps`), else
  `ceil(warmup_ratio * total_steps)`.

`total_steps = n_epochs * ceil(n_examples / batch_size)` (the last batch of an epoch may be
smaller; epochs never mix).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tuneforge.contracts import BASE_LEARNING_RATE, TrainingHyperparameters

MIN_EXAMPLES_SEEN = 100
MAX_EXAMPLES_SEEN = 25_000
DEFAULT_EPOCHS = 3
MAX_AUTO_EPOCHS = 25
MAX_AUTO_BATCH = 256


@dataclass(frozen=True)
class Resolved:
    """Concrete hyperparameters for one run; written to result.json as the job reports them."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    lr_scheduler: str
    max_seq_length: int
    seed: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def auto_epochs(n_examples: int) -> int:
    if n_examples * DEFAULT_EPOCHS < MIN_EXAMPLES_SEEN:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / n_examples))
    if n_examples * DEFAULT_EPOCHS > MAX_EXAMPLES_SEEN:
        return max(1, MAX_EXAMPLES_SEEN // n_examples)
    return DEFAULT_EPOCHS


def auto_batch_size(n_examples: int) -> int:
    return max(1, min(MAX_AUTO_BATCH, int(n_examples * 0.002)))


def auto_lr_multiplier(batch_size: int) -> float:
    return min(2.0, max(0.5, math.sqrt(batch_size / 8)))


def resolve(hp: TrainingHyperparameters, n_examples: int) -> Resolved:
    """Concrete values for `hp` on a dataset of `n_examples` examples."""
    batch = auto_batch_size(n_examples) if hp.batch_size == "auto" else int(hp.batch_size)
    batch = min(batch, n_examples)
    epochs = auto_epochs(n_examples) if hp.n_epochs == "auto" else int(hp.n_epochs)
    multiplier = (
        auto_lr_multiplier(batch) if hp.learning_rate_multiplier == "auto" else float(hp.learning_rate_multiplier)
    )
    steps_per_epoch = math.ceil(n_examples / batch)
    total = epochs * steps_per_epoch
    return Resolved(
        n_epochs=epochs,
        batch_size=batch,
        learning_rate_multiplier=multiplier,
        learning_rate=BASE_LEARNING_RATE * multiplier,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=min(hp.warmup_steps, total) if hp.warmup_steps is not None else math.ceil(hp.warmup_ratio * total),
        lr_scheduler=hp.lr_scheduler,
        max_seq_length=hp.max_seq_length,
        seed=hp.seed,
    )
