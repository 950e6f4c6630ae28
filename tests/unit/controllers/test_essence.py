"""kopf's change detection is off (controllers/essence.py), which is right only while no
handler depends on it: no create, update, resume or field handler and no timer or daemon.
A delete handler is chosen from the deletion alone and stays possible."""

from __future__ import annotations

import argparse

import kopf
from kopf._core.intents.causes import Reason

from tuneforge.controllers import cli, run
from tuneforge.controllers.essence import NoEssence
from tuneforge.controllers.leadership import Leadership
from tuneforge.controllers.settings import ControllerSettings
from tuneforge.controllers.ticker import Ticking


def test_no_registered_handler_needs_kopfs_diff() -> None:
    registry = run.build_registry(cluster_wide=True, controller_settings=ControllerSettings(),
                                  ticking=Ticking(Leadership("test"), kopf.OperatorSettings(), workers=1))
    changing = registry._changing.get_all_handlers()
    assert changing, "the BatchJob delete handler is registered"
    assert {handler.reason for handler in changing} == {Reason.DELETE}
    assert not registry._spawning.get_all_handlers()


def test_the_operator_keeps_no_essence() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    settings = run.operator_settings(parser.parse_args([]))
    assert isinstance(settings.persistence.diffbase_storage, NoEssence)
    body = kopf.Body({"metadata": {"name": "b", "annotations": {"a": "1"}}, "spec": {"x": 1}, "status": {"y": 2}})
    storage = settings.persistence.diffbase_storage
    assert storage.build(body=body) == storage.fetch(body=body) == {}

