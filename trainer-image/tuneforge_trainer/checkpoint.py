"""Checkpoints and the final adapter, published atomically to the artifact store.

A checkpoint is `<output>/checkpoints/step-<n>/` holding the adapter, optimizer and
scheduler state, every process's RNG state and `state.json` (step, data position, trained
tokens). It counts only once its `COMPLETE` marker exists:

- on a local or PVC store it is built in a hidden sibling directory and renamed into
  place (rename is atomic within one filesystem), so a `step-<n>/` directory is always whole;
- on an object store its files are uploaded first and the marker last.

A pod killed mid-save leaves at most a hidden temporary directory (removed on the next
start) or a marker-less prefix (ignored, then pruned). The final adapter is published the
same way, with `adapter_config.json` as the last upload on object stores: peft and vLLM
cannot load an adapter directory without it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from tuneforge.storage import ArtifactStore

MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class TrainState:
    """Where training stands after `step` optimizer steps."""

    step: int
    epoch: int  # epoch the next step belongs to
    step_in_epoch: int  # steps of that epoch already done
    trained_tokens: int


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def publish_directory(store: ArtifactStore, name: str, build: Callable[[Path], None], commit_file: str) -> None:
    """Builds a directory with `build(path)` and makes it appear at `name` in the store
    all at once (see the module docstring); replaces an existing one."""
    dest = store.path(name)
    if isinstance(store.fs, LocalFileSystem):
        parent, base = os.path.split(dest)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f"{TMP_PREFIX}{base}-{uuid.uuid4().hex}")
        os.makedirs(tmp)
        try:
            build(Path(tmp))
            _fsync_tree(tmp)
            if os.path.exists(dest):
                old = os.path.join(parent, f"{TMP_PREFIX}old-{base}-{uuid.uuid4().hex}")
                os.rename(dest, old)
                os.rename(tmp, dest)
                shutil.rmtree(old)
            else:
                os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        store.delete(dest)
        names = sorted(os.listdir(tmp), key=lambda n: n == commit_file)
        for file_name in names:
            store.fs.put_file(os.path.join(tmp, file_name), f"{dest}/{file_name}")


def _fsync_tree(path: str) -> None:
    for file_name in os.listdir(path):
        with open(os.path.join(path, file_name), "rb") as handle:
            os.fsync(handle.fileno())


def save_checkpoint(store: ArtifactStore, state: TrainState, *, model, optimizer, scheduler,
                    rng_states: list[dict]) -> str:
    """Publishes `checkpoints/step-<n>/`; returns its store path. Main process only."""
    name = f"checkpoints/step-{state.step}"

    def build(path: Path) -> None:
        model.save_pretrained(path)
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
        torch.save(scheduler.state_dict(), path / "scheduler.pt")
        torch.save(rng_states, path / "rng.pt")
        (path / "state.json").write_text(json.dumps(asdict(state)))
        (path / MARKER).write_text("")

    publish_directory(store, name, build, commit_file=MARKER)
    return store.path(name)


def complete_checkpoints(store: ArtifactStore) -> list[int]:
    """Steps of the complete checkpoints, oldest first."""
    steps = []
    for entry in store.listdir(store.path("checkpoints")):
        match = STEP_DIR.match(entry)
        if match and store.exists(store.path("checkpoints", entry, MARKER)):
            steps.append(int(match.group(1)))
    return sorted(steps)


def prune(store: ArtifactStore, keep_last: int) -> None:
    """Keeps the newest `keep_last` complete checkpoints; removes older ones, incomplete
    ones and leftovers of interrupted saves. Safe because one process alone writes a
    job's checkpoints (the main process of the one running pod)."""
    complete = complete_checkpoints(store)
    keep = {f"step-{s}" for s in complete[-keep_last:]}
    for entry in store.listdir(store.path("checkpoints")):
        if entry not in keep and (entry.startswith(TMP_PREFIX) or STEP_DIR.match(entry)):
            store.delete(store.path("checkpoints", entry))


@dataclass
class Restored:
    state: TrainState
    directory: Path  # a local directory holding the checkpoint files
    rng_states: list[dict]


def latest_checkpoint(store: ArtifactStore, scratch: Path) -> Restored | None:
    """The newest complete checkpoint as local files (downloaded into `scratch` when the
    store is remote), or None when the run starts fresh."""
    steps = complete_checkpoints(store)
    if not steps:
        return None
    remote = store.path("checkpoints", f"step-{steps[-1]}")
    local = store.local_path(remote)
    if local is None:
        local = str(scratch / f"step-{steps[-1]}")
        store.fs.get(remote + "/", local + "/", recursive=True)
    directory = Path(local)
    state = TrainState(**json.loads((directory / "state.json").read_text()))
    rng_states = torch.load(directory / "rng.pt", weights_only=False)
    return Restored(state, directory, rng_states)


def save_final_adapter(store: ArtifactStore, *, model, tokenizer) -> str:
    """Publishes `adapter/` (adapter weights, config and tokenizer files)."""

    def build(path: Path) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    publish_directory(store, "adapter", build, commit_file="adapter_config.json")
    return store.uri("adapter")


def save_merged_model(store: ArtifactStore, *, model, tokenizer) -> str:
    """Publishes `merged/`: the base with the adapter folded in, for engines without LoRA."""

    def build(path: Path) -> None:
        merged = model.merge_and_unload()
        merged.save_pretrained(path)
        tokenizer.save_pretrained(path)

    publish_directory(store, "merged", build, commit_file="config.json")
    return store.uri("merged")
