"""The controller settings reach every kind's handlers from `register`, not from a global."""

from __future__ import annotations

import argparse

import kopf
import pytest

from tuneforge.controllers import autoscaler, basemodel, batch, cli, deployment, finetuning, run
from tuneforge.controllers.leadership import Leadership
from tuneforge.controllers.settings import ControllerSettings
from tuneforge.controllers.ticker import Ticking


def _intervals(registry: kopf.OperatorRegistry) -> list[float]:
    return [h.fn.__self__.interval for h in registry._watching.get_all_handlers() if h.id == "reconcile"]


def _ticking() -> Ticking:
    return Ticking(Leadership("test"), kopf.OperatorSettings(), workers=1)


@pytest.mark.parametrize("kind,polls_per_interval", [
    (finetuning, 1), (batch, 1), (deployment, 1), (basemodel, 1 / 5),
])
def test_each_kind_reconciles_at_the_poll_interval_it_is_registered_with(kind, polls_per_interval) -> None:
    registry = kopf.OperatorRegistry()
    kind.register(registry, ControllerSettings(poll_interval=7), _ticking())
    assert _intervals(registry) == [pytest.approx(7 / polls_per_interval)]


def test_two_registries_keep_their_own_settings() -> None:
    slow, fast = kopf.OperatorRegistry(), kopf.OperatorRegistry()
    finetuning.register(slow, ControllerSettings(poll_interval=30), _ticking())
    finetuning.register(fast, ControllerSettings(poll_interval=0.5), _ticking())
    assert _intervals(slow) == [30]
    assert _intervals(fast) == [0.5]


def test_the_command_line_builds_the_settings_with_their_defaults() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert run.controller_settings(parser.parse_args([])) == ControllerSettings()
    given = run.controller_settings(parser.parse_args(
        ["--poll-interval", "0.5", "--status-interval", "1", "--dependency-grace", "3",
         "--pod-admission-timeout", "9", "--batch-retries-per-hour", "2"]))
    assert given == ControllerSettings(poll_interval=0.5, status_interval=1, dependency_grace=3,
                                       pod_admission_timeout=9, batch_retries_per_hour=2)


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_retry_budget_below_one_is_refused_naming_the_option(value: str, capsys) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch-retries-per-hour", value])
    assert "--batch-retries-per-hour" in capsys.readouterr().err


def test_the_autoscaler_ticks_at_the_autoscale_interval_beside_the_deployments_reconcile() -> None:
    registry = kopf.OperatorRegistry()
    deployment.register(registry, ControllerSettings(poll_interval=2, autoscale_interval=9), _ticking())
    autoscaler.register(registry, ControllerSettings(poll_interval=2, autoscale_interval=9), _ticking())
    tickers = {h.id: h.fn.__self__.interval for h in registry._watching.get_all_handlers()}
    assert tickers == {"reconcile": 2, "autoscale": 9}


def test_a_fine_tuning_job_leaving_its_ticker_leaves_the_progress_throttle() -> None:
    """One event handler per job event (the ticker's), which also empties the throttle."""
    registry = kopf.OperatorRegistry()
    finetuning.register(registry, ControllerSettings(status_interval=60), _ticking())
    handlers = {h.id: h.fn for h in registry._watching.get_all_handlers()}
    assert set(handlers) == {"reconcile"}
    forget = handlers["reconcile"].__self__._forget
    throttle = forget.__self__
    assert throttle.ready(("team", "a")) and not throttle.ready(("team", "a"))
    forget(("team", "a"))
    assert throttle.ready(("team", "a"))
