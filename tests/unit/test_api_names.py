"""The names both the controllers and the gateway derive from a resource: one definition
on the ground floor, so the id the controller assigns is the id the gateway routes."""

from __future__ import annotations

import pytest

from tuneforge.api.v1alpha1 import batchjob, finetuningjob


def test_fine_tuned_model_id_has_an_empty_suffix_segment_when_none_is_given() -> None:
    assert finetuningjob.fine_tuned_model_id("b", "ns", None, "ftjob-1") == "ft:b:ns::ftjob-1"
    assert finetuningjob.fine_tuned_model_id("b", "ns", "bot", "ftjob-1") == "ft:b:ns:bot:ftjob-1"


@pytest.mark.parametrize("suffix", [None, "support-bot"])
def test_the_job_is_read_back_from_the_model_id_it_named(suffix: str | None) -> None:
    model = finetuningjob.fine_tuned_model_id("smollm2", "team-a", suffix, "ftjob-0a1b")
    assert finetuningjob.job_of_fine_tuned_model(model) == "ftjob-0a1b"


@pytest.mark.parametrize("model", ["smollm2", "ft:smollm2:team-a:ftjob-1", "ft:b:ns:s:job-1", "xx:b:ns:s:ftjob-1"])
def test_other_ids_name_no_job(model: str) -> None:
    assert finetuningjob.job_of_fine_tuned_model(model) is None


def test_terminal_phases_are_phases_of_the_kind() -> None:
    assert finetuningjob.TERMINAL_PHASES == {"Succeeded", "Failed", "Cancelled"}
    assert finetuningjob.TERMINAL_PHASES <= {phase.value for phase in finetuningjob.FineTuningJobPhase}
    assert batchjob.TERMINAL_PHASES == {"Completed", "Failed", "Expired", "Cancelled"}
    assert batchjob.TERMINAL_PHASES <= {phase.value for phase in batchjob.BatchJobPhase}
