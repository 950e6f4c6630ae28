"""The management API speaks absolute learning rates while FineTuningJob specs store
multipliers of the LoRA base rate; both directions convert here, so a rate a caller sends
comes back unchanged."""

from __future__ import annotations

from tuneforge.contracts import BASE_LEARNING_RATE


def _significant(value: float) -> float:
    """Drops float noise from unit conversions (3e-4 / 2e-4 is 1.4999999999999998)."""
    return float(f"{value:.12g}")


def learning_rate_multiplier(learning_rate: float) -> float:
    """An absolute learning rate as the multiplier of the LoRA base rate the spec stores."""
    return _significant(learning_rate / BASE_LEARNING_RATE)


def learning_rate(multiplier: float) -> float:
    """A stored multiplier as the absolute learning rate."""
    return _significant(float(multiplier) * BASE_LEARNING_RATE)
