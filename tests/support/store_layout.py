"""Files put straight into a file:// artifact store, laid out as the gateway and the
workloads write them, so that controller tests and benchmarks need neither."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, value: Any) -> None:
    """Writes through a rename, as the workloads do, so the operator never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def chat_example(i: int) -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})


def upload(store_root: Path, namespace: str, file_id: str, lines: list[str]) -> None:
    """A file as the gateway's upload endpoint stores it."""
    directory = store_root / namespace / "files" / file_id
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "content").write_text("\n".join(lines) + "\n")
    (directory / "meta.json").write_text(json.dumps({"id": file_id, "object": "file"}))
