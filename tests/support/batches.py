"""Batch inputs, specs and result readers shared by the batch tests and the benchmark."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tuneforge.contracts import BATCH_FINALIZE_MARKER, BatchFinalize, BatchRun
from tuneforge.storage import ArtifactStore

from tests.support.openai_upstream import RunningUpstream

API_KEY = "sk-batch-test"
MODEL = "tiny-chat"


def request_line(custom_id: str, content: str | None = None, model: str = MODEL) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content or f"hello {custom_id}"}]},
    }


@dataclass
class BatchFiles:
    """One batch's locations in a tmp store, and readers for what the runner left."""

    root: Path
    batch_id: str = "batch-test"
    namespace: str = "team-a"

    @property
    def batch_dir(self) -> Path:
        return self.root / "store" / self.namespace / "batches" / self.batch_id

    @property
    def input_path(self) -> Path:
        return self.root / "input.jsonl"

    def write_input(self, lines: list[dict[str, Any] | str]) -> None:
        with open(self.input_path, "w") as handle:
            for line in lines:
                handle.write((line if isinstance(line, str) else json.dumps(line)) + "\n")

    def spec(self, upstream: RunningUpstream | str, **overrides: Any) -> BatchRun:
        base_url = upstream if isinstance(upstream, str) else upstream.base_url
        fields: dict[str, Any] = {
            "batch_id": self.batch_id,
            "namespace": self.namespace,
            "input_uri": f"file://{self.input_path}",
            "output_uri": f"file://{self.batch_dir}",
            "store_root": f"file://{self.root / 'store'}",
            "target_base_url": base_url,
            "expires_at": datetime.now(timezone.utc) + timedelta(hours=1),
            "served_models": [MODEL],
            "output_file_id": "file-out",
            "error_file_id": "file-err",
            "concurrency": 8,
            "max_retries": 3,
            "request_timeout_s": 10.0,
            "cancel_grace_s": 5.0,
        }
        fields.update(overrides)
        return BatchRun(**fields)

    def write_spec(self, spec: BatchRun) -> Path:
        path = self.root / "batch.json"
        path.write_text(spec.dump())
        return path

    def write_finalize_marker(self, marker: BatchFinalize) -> None:
        """What the controller writes to end a batch its runner cannot finish."""
        store = ArtifactStore(f"file://{self.batch_dir}")
        store.write_json(store.path(BATCH_FINALIZE_MARKER), marker.model_dump(mode="json"))

    def progress(self) -> dict[str, Any]:
        return json.loads((self.batch_dir / "progress.json").read_text())

    def lines(self, name: str) -> list[dict[str, Any]]:
        path = self.batch_dir / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def recorded(self, name: str = "output.jsonl") -> int:
        """Lines in the runner's journal on a local store; safe while the runner writes."""
        path = self.batch_dir / "journal" / name
        return path.read_bytes().count(b"\n") if path.exists() else 0

    def journal_lines(self, name: str) -> list[dict[str, Any]]:
        """The lines of the journal of a runner that has stopped."""
        path = self.batch_dir / "journal" / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def file_dir(self, file_id: str) -> Path:
        return self.root / "store" / self.namespace / "files" / file_id


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
