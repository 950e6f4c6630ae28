"""Copies of the journal in an object store, so a batch on `s3://` storage resumes in a
new Pod instead of starting over.

On a local store the journal lives inside the batch directory (a PVC) and outlives the
Pod. On an object store it lives on the Pod's own disk, which a replacement Pod (node
lost, Job retry) does not have; so the runner uploads the journal to
`<batch>/journal/` every `snapshot_s`, and a runner that finds no local journal starts
from that copy (`BatchRun.journal_snapshot_s` sets the period).

Each snapshot reads the state first, then uploads the result files, then the state:
every line recorded before the state was read is in the uploaded files, so a snapshot
whose state says the batch's end was decided (all requests recorded) carries all their
lines, and result files from a snapshot whose state never arrived are still worth
restoring. Lines recorded after a snapshot are simply missing from it, and their requests are
sent again after a restore, so every custom_id still ends in exactly one line. A line
being appended while its file is uploaded may arrive torn; the journal cuts torn tails
when it opens, as after a crash.

The requests in flight are uploaded too (`inflight.json`), separately and more often: at
every tick when the set changed, and before each request of the solo phase is sent
(crashes.py). A restore turns it into the journal's dispatched log, so a new Pod charges a
crash to what was in flight when the previous Pod died, as a restarted container does from
its local log. The remote set lags by up to one tick in the concurrent phase (a request
sent and fatal within one tick escapes its first charge) and is exact in the solo phase.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.storage import ArtifactStore

from tuneforge_inference.batch.journal import DISPATCHED, ERRORS, OUTPUT, STATE, Journal, dispatch_line

SNAPSHOT_DIR = "journal"
JOURNAL_FILES = (OUTPUT, ERRORS, STATE)
IN_FLIGHT = "inflight.json"


def take(journal: Journal, batch_dir: ArtifactStore) -> None:
    """Uploads the journal; each object appears only once its upload completes."""
    state = json.dumps(journal.state.__dict__).encode()
    journal.sync()
    for name, path in ((OUTPUT, journal.output_path), (ERRORS, journal.errors_path)):
        with open(path, "rb") as source:
            batch_dir.copy_stream(source, batch_dir.path(SNAPSHOT_DIR, name))
    batch_dir.write_bytes(batch_dir.path(SNAPSHOT_DIR, STATE), state)


def put_in_flight(custom_ids: list[str], batch_dir: ArtifactStore) -> None:
    batch_dir.write_json(batch_dir.path(SNAPSHOT_DIR, IN_FLIGHT), custom_ids)


def restore(work_dir: Path, batch_dir: ArtifactStore) -> bool:
    """Fills an empty local work directory from whatever the latest snapshot holds; False
    when there is a local journal already (a container restart in the same Pod) or no
    snapshot at all.

    A Pod lost between a snapshot's result files and its state leaves results without a
    state; they are restored all the same (the state only spares re-validating the input),
    so no recorded answer is requested twice. An in-flight set is restored even alone: a
    request that kills the runner usually does so long before the first snapshot."""
    if any((work_dir / name).exists() for name in JOURNAL_FILES):
        return False
    found = [name for name in JOURNAL_FILES if batch_dir.exists(batch_dir.path(SNAPSHOT_DIR, name))]
    in_flight = batch_dir.read_json(batch_dir.path(SNAPSHOT_DIR, IN_FLIGHT), [])
    if not found and not in_flight:
        return False
    work_dir.mkdir(parents=True, exist_ok=True)
    for name in found:
        (work_dir / name).write_bytes(batch_dir.read_bytes(batch_dir.path(SNAPSHOT_DIR, name)))
    (work_dir / DISPATCHED).write_bytes(b"".join(dispatch_line(custom_id) for custom_id in in_flight))
    return True
