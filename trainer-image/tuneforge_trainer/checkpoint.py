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
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from peft import get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from tuneforge import jobfiles
from tuneforge.jobfiles import JobFiles
from tuneforge.storage import ArtifactStore

MARKER = jobfiles.COMPLETE
TMP_PREFIX = ".tmp-"
TRAINABLE_FILE = "trainable.safetensors"


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
            source, target = os.path.join(tmp, file_name), f"{dest}/{file_name}"
            store.retry.call(lambda: store.fs.put_file(source, target), f"upload {target}")


def _fsync_tree(path: str) -> None:
    for file_name in os.listdir(path):
        with open(os.path.join(path, file_name), "rb") as handle:
            os.fsync(handle.fileno())


def save_checkpoint(store: ArtifactStore, state: TrainState, *, model, trainable: dict, optimizer_state: dict,
                    scheduler, rng_states: list[dict]) -> str:
    """Publishes `checkpoints/step-<n>/`; returns its store path. Main process only.

    `trainable` and `optimizer_state` are full (gathered) state keyed by parameter name,
    so any world size and strategy can resume from it; the adapter is written beside them
    in peft's format, so a checkpoint is also a servable adapter."""
    name = JobFiles(store).checkpoint_name(state.step)

    def build(path: Path) -> None:
        model.save_pretrained(path, state_dict=trainable)
        save_file({k: v.contiguous() for k, v in trainable.items()}, path / TRAINABLE_FILE)
        torch.save(optimizer_state, path / "optimizer.pt")
        torch.save(scheduler.state_dict(), path / "scheduler.pt")
        torch.save(rng_states, path / "rng.pt")
        (path / "state.json").write_text(json.dumps(asdict(state)))
        (path / MARKER).write_text("")

    publish_directory(store, name, build, commit_file=MARKER)
    return store.path(name)


def complete_checkpoints(store: ArtifactStore) -> list[int]:
    """Steps of the complete checkpoints, oldest first."""
    return JobFiles(store).complete_checkpoints()


def prune(store: ArtifactStore, keep_last: int) -> None:
    """Keeps the newest `keep_last` complete checkpoints; removes older ones, incomplete
    ones and leftovers of interrupted saves. Safe because one process alone writes a
    job's checkpoints (the main process of the one running pod)."""
    complete = complete_checkpoints(store)
    keep = {f"step-{s}" for s in complete[-keep_last:]}
    for entry in store.listdir(store.path(jobfiles.CHECKPOINTS)):
        if entry not in keep and (entry.startswith(TMP_PREFIX) or jobfiles.STEP_DIR.match(entry)):
            store.delete(store.path(jobfiles.CHECKPOINTS, entry))


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
    remote = store.path(JobFiles(store).checkpoint_name(steps[-1]))
    local = store.local_path(remote)
    if local is None:
        local = str(scratch / f"step-{steps[-1]}")
        store.retry.call(lambda: store.fs.get(remote + "/", local + "/", recursive=True), f"download {remote}")
    directory = Path(local)
    state = TrainState(**json.loads((directory / "state.json").read_text()))
    rng_states = torch.load(directory / "rng.pt", weights_only=False)
    return Restored(state, directory, rng_states)


def save_final_adapter(store: ArtifactStore, *, model, trainable: dict, tokenizer) -> str:
    """Publishes `adapter/` (adapter weights, config and tokenizer files)."""

    def build(path: Path) -> None:
        model.save_pretrained(path, state_dict=trainable)
        tokenizer.save_pretrained(path)

    publish_directory(store, jobfiles.ADAPTER, build, commit_file="adapter_config.json")
    return store.uri(jobfiles.ADAPTER)


def save_merged_model(store: ArtifactStore, *, base_dir: Path, lora_config, trainable: dict, tokenizer) -> str:
    """Publishes `merged/`: the base with the adapter folded in, for engines without LoRA.

    The base is loaded afresh, on the CPU, in the dtype its weights are stored in, and the
    trained adapter is applied to it there: the training copy may be sharded (FSDP) or
    4-bit (QLoRA), and folding an update into NF4 weights would quantize it away."""

    def build(path: Path) -> None:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
        model = get_peft_model(base, lora_config)
        unexpected = model.load_state_dict(trainable, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"adapter weights do not fit the base model: {unexpected[:3]}")
        model.merge_and_unload().save_pretrained(path)
        tokenizer.save_pretrained(path)

    publish_directory(store, jobfiles.MERGED, build, commit_file="config.json")
    return store.uri(jobfiles.MERGED)
