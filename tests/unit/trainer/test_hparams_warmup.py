"""Warmup given in steps (the management API's warmupSteps) replaces the warmup ratio."""

from tuneforge.contracts import BASE_LEARNING_RATE, TrainingHyperparameters

from tuneforge_trainer.hparams import resolve


def test_warmup_steps_replace_the_ratio_and_are_capped_at_the_run() -> None:
    by_ratio = resolve(TrainingHyperparameters(n_epochs=2, batch_size=2, warmup_ratio=0.1), n_examples=20)
    assert by_ratio.total_steps == 20 and by_ratio.warmup_steps == 2
    by_steps = resolve(TrainingHyperparameters(n_epochs=2, batch_size=2, warmup_steps=7), n_examples=20)
    assert by_steps.warmup_steps == 7
    capped = resolve(TrainingHyperparameters(n_epochs=1, batch_size=2, warmup_steps=500), n_examples=20)
    assert capped.warmup_steps == capped.total_steps == 10
    assert resolve(TrainingHyperparameters(learning_rate_multiplier=1.5), n_examples=20).learning_rate == (
        BASE_LEARNING_RATE * 1.5)
