"""Restoring a journal snapshot into a new Pod's empty disk (the object-store path of
test_object_store_resume, here with the store on a local directory so each case is exact)."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.storage import ArtifactStore

from tuneforge_inference.batch import snapshot
from tuneforge_inference.batch.journal import OUTPUT, STATE, Journal


def _line(custom_id: str) -> str:
    response = {"status_code": 200, "request_id": custom_id, "body": {}}
    return json.dumps({"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": response, "error": None})


def _store_with_snapshot(tmp_path: Path, *, ids: list[str], state: dict | None) -> ArtifactStore:
    store = ArtifactStore(str(tmp_path / "store"))
    store.write_bytes(store.path(snapshot.SNAPSHOT_DIR, OUTPUT), "".join(_line(i) + "\n" for i in ids).encode())
    if state is not None:
        store.write_bytes(store.path(snapshot.SNAPSHOT_DIR, STATE), json.dumps(state).encode())
    return store


def test_results_whose_state_never_arrived_are_restored(tmp_path: Path):
    store = _store_with_snapshot(tmp_path, ids=["a", "b", "c"], state=None)
    work_dir = tmp_path / "pod" / "journal"

    assert snapshot.restore(work_dir, store)

    journal = Journal(work_dir)
    assert journal.done == {"a", "b", "c"}
    assert not journal.state.validated, "without a state the input is validated again"
    journal.close()


def test_a_complete_snapshot_restores_results_and_state(tmp_path: Path):
    store = _store_with_snapshot(tmp_path, ids=["a"], state={"validated": True, "total": 5, "final": None})
    work_dir = tmp_path / "pod" / "journal"

    assert snapshot.restore(work_dir, store)

    journal = Journal(work_dir)
    assert journal.done == {"a"}
    assert journal.state.validated and journal.state.total == 5
    journal.close()


def test_a_local_journal_wins_over_the_snapshot(tmp_path: Path):
    store = _store_with_snapshot(tmp_path, ids=["a", "b"], state={"validated": True, "total": 5, "final": None})
    work_dir = tmp_path / "pod" / "journal"
    work_dir.mkdir(parents=True)
    (work_dir / OUTPUT).write_text(_line("z") + "\n")

    assert not snapshot.restore(work_dir, store)

    journal = Journal(work_dir)
    assert journal.done == {"z"}
    journal.close()


def test_the_in_flight_set_comes_back_and_is_charged_a_crash(tmp_path: Path):
    store = _store_with_snapshot(tmp_path, ids=["a"], state={"validated": True, "total": 5, "final": None})
    snapshot.put_in_flight(["a", "b"], store)
    work_dir = tmp_path / "pod" / "journal"

    assert snapshot.restore(work_dir, store)

    journal = Journal(work_dir)
    assert journal.state.crashes == {"b": 1}, "a request with a result was not in flight at the death"
    journal.close()


def test_an_in_flight_set_alone_is_restored(tmp_path: Path):
    """A request that kills the runner within seconds does so before the first snapshot."""
    store = ArtifactStore(str(tmp_path / "store"))
    snapshot.put_in_flight(["x"], store)
    work_dir = tmp_path / "pod" / "journal"

    assert snapshot.restore(work_dir, store)

    journal = Journal(work_dir)
    assert journal.state.crashes == {"x": 1} and journal.done == set()
    journal.close()


def test_no_snapshot_means_a_fresh_start(tmp_path: Path):
    assert not snapshot.restore(tmp_path / "pod" / "journal", ArtifactStore(str(tmp_path / "store")))
