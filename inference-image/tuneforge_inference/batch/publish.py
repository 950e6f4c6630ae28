"""Publishing the finished result files: as Files the gateway serves, and in the batch's
directory.

Each copy lands atomically (ArtifactStore.open_atomic: temp-and-rename locally, one
upload on object stores), and a File's meta.json is written after its content, so the
gateway never lists a File whose bytes are not all there. Every step overwrites the same
names, so a runner killed while publishing simply publishes again on restart.
"""

from __future__ import annotations

import time
from pathlib import Path

from tuneforge.contracts import BatchRun
from tuneforge.storage import ArtifactStore

from tuneforge_inference.batch.journal import Journal


def publish(spec: BatchRun, journal: Journal) -> tuple[str, str | None]:
    """Registers the output file (always, as OpenAI does, even when empty) and the error
    file (only when it has lines); returns (output_file_id, error_file_id or None)."""
    files = ArtifactStore(spec.store_root)
    batch_dir = ArtifactStore(spec.output_uri)
    _register(files, spec.namespace, spec.output_file_id, journal.output_path, f"{spec.batch_id}_output.jsonl")
    _copy(batch_dir, batch_dir.path("output.jsonl"), journal.output_path)
    if journal.errors_path.stat().st_size == 0:
        return spec.output_file_id, None
    _register(files, spec.namespace, spec.error_file_id, journal.errors_path, f"{spec.batch_id}_error.jsonl")
    _copy(batch_dir, batch_dir.path("errors.jsonl"), journal.errors_path)
    return spec.output_file_id, spec.error_file_id


def _register(store: ArtifactStore, namespace: str, file_id: str, source: Path, filename: str) -> None:
    directory = store.file_dir(namespace, file_id)
    size = _copy(store, f"{directory}/content", source)
    store.write_json(
        f"{directory}/meta.json",
        {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": "batch_output",
            "status": "processed",
        },
    )


def _copy(store: ArtifactStore, path: str, source: Path) -> int:
    with open(source, "rb") as handle:
        return store.copy_stream(handle, path)
