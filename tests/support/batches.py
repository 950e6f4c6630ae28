"""Batch inputs, specs and result readers shared by the batch tests and the benchmark."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tuneforge.contracts import BatchRun

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

    def progress(self) -> dict[str, Any]:
        return json.loads((self.batch_dir / "progress.json").read_text())

    def lines(self, name: str) -> list[dict[str, Any]]:
        path = self.batch_dir / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def file_dir(self, file_id: str) -> Path:
        return self.root / "store" / self.namespace / "files" / file_id
