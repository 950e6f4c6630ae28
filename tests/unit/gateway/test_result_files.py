"""Results Files (tuneforge.gateway.result_files): ids derived from jobs, and the File
object of a job's results.csv."""

from __future__ import annotations

import re

import pytest

from tuneforge.api.v1alpha1.common import FILE_REF_PATTERN
from tuneforge.gateway import result_files
from tuneforge.gateway.files import FILE_ID
from tuneforge.gateway.fine_tuning_objects import job_object
from tuneforge.gateway.ids import derived_id, new_id
from tuneforge.storage import ArtifactStore


def job(name: str = "ftjob-0190aa", status: dict | None = None) -> dict:
    return {"metadata": {"name": name, "namespace": "team-a", "creationTimestamp": "2024-01-02T03:00:00Z"},
            "spec": {"baseModel": "tiny", "trainingFile": "file-0123456789ab"}, "status": status}


@pytest.mark.parametrize("name", ["ftjob-0190aa", "nightly.run-7", "a", "x" * 253])
def test_ids_name_their_job(name: str) -> None:
    file_id = result_files.results_file_id(name)
    assert file_id.startswith("file-") and result_files.job_of(file_id) == name


@pytest.mark.parametrize("file_id", [
    "file-0123456789ab", "file-results-", "file-results-../etc", "file-results-Upper", "file-results-a/b",
    "file-results-x-", "file-results-" + "x" * 254, "results-ftjob-1", "file-resultsftjob",
])
def test_other_ids_name_no_job(file_id: str) -> None:
    assert result_files.job_of(file_id) is None


def test_results_ids_and_upload_ids_never_meet() -> None:
    """An upload id is never looked up as a job, and a results id can never be a job's
    training file."""
    for upload in (new_id("file"), derived_id("file", "team-a", "key")):
        assert FILE_ID.match(upload) and result_files.job_of(upload) is None
    results = result_files.results_file_id("ftjob-0190aa")
    assert not FILE_ID.match(results) and not re.match(FILE_REF_PATTERN, results)


def test_a_job_lists_its_results_file_once_the_trainer_wrote_it() -> None:
    assert job_object(job(status=None)).result_files == []
    assert job_object(job(status={"phase": "Running"})).result_files == []
    succeeded = {"phase": "Succeeded", "resultFiles": ["s3://bucket/team-a/fine-tuning/ftjob-0190aa/results.csv"]}
    assert job_object(job(status=succeeded)).result_files == ["file-results-ftjob-0190aa"]


def test_the_file_object_is_a_processed_result_created_when_the_job_finished() -> None:
    resource = job(status={"phase": "Succeeded", "finishedAt": "2024-01-02T03:04:05Z", "resultFiles": ["x"]})
    file = result_files.file_object(resource, 42)
    assert file.model_dump() == {
        "id": "file-results-ftjob-0190aa", "object": "file", "bytes": 42, "created_at": 1704164645,
        "filename": "ftjob-0190aa-results.csv", "purpose": "fine-tune-results", "status": "processed",
        "status_details": None, "expires_at": None}


def test_the_content_is_the_jobs_results_csv(tmp_path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    assert result_files.content_path(store, "team-a", "file-results-ftjob-1") == store.path(
        "team-a", "fine-tuning", "ftjob-1", "results.csv")
    with pytest.raises(ValueError):
        result_files.content_path(store, "team-a", "file-0123456789ab")
