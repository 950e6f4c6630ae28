"""What every process of a run shares: the process group, the trainable state gathered
for checkpoints, and the stop request that SIGTERM raises.

Checkpoints hold *full* (unsharded) state keyed by parameter name, gathered with
`torch.distributed.checkpoint.state_dict`: the same functions serve one process, DDP and
FSDP2, and a checkpoint written by any world size or strategy resumes under any other.
Only trainable parameters travel (`ignore_frozen_params`), so a checkpoint costs the size of
the adapter and its optimizer state, never the base model's.
"""

from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from tuneforge_trainer.errors import Preempted

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
SCATTER = StateDictOptions(full_state_dict=True, strict=False)


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def ensure_process_group() -> None:
    """A one-member group for a process that runs alone, so the state functions below
    (which ask the group for ranks) work the same without torchrun. Kept in memory: no
    port, no network."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, on the CPU of rank 0 (empty elsewhere). Collective.

    `ignore_frozen_params` drops frozen parameters but not the extra state bitsandbytes
    keeps beside a 4-bit weight (absmax, quant_map, ...), so the names are filtered too."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in get_model_state_dict(model, options=GATHER).items() if k in trainable}


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's full state keyed by parameter name, on rank 0. Collective."""
    return get_optimizer_state_dict(model, optimizer, options=GATHER)


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    """Every rank passes the same full state; sharded models keep their own shard."""
    set_model_state_dict(model, state, options=SCATTER)


def load_optimizer_state(model, optimizer, state: dict) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=SCATTER)


class StopRequest:
    """SIGTERM (a pause, a Kueue preemption, a node drain) as a request to stop.

    Until training begins there is nothing to save, so the signal stops the process at
    once. Once `defer()` is called the signal only sets `requested`; the loop finishes the
    optimizer step it is in, agrees with the other ranks that someone was asked to stop,
    writes a checkpoint and raises `Preempted`, all inside the Pod's grace period.
    """

    def __init__(self) -> None:
        self.requested = False
        self._deferred = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def defer(self) -> None:
        self._deferred = True

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if not self._deferred:
            raise Preempted("stopped by SIGTERM before training began")
