"""LoRA adapters on one transformers model: registered by name, resident up to a bound.

Mirrors vLLM's split between adapters the server knows (every successful
load_lora_adapter; listed by /v1/models) and adapters held in memory (`--max-cpu-loras`,
LRU). Here at most `capacity` adapters are injected into the model; a request for a known
adapter that was evicted loads it again from its local copy.

Not thread-safe on purpose: every method runs on the engine's single generation thread,
the only thread that touches the model, so switching adapters never races a forward pass.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from tuneforge_inference.cpu.errors import APIError
from tuneforge_inference.fetch import FetchError, check_adapter_dir, fetch_adapter


@dataclass(frozen=True)
class Adapter:
    name: str
    source: str
    local_path: Path


def adapter_rank(path: Path) -> int:
    """The largest LoRA rank in an adapter's config (rank_pattern can raise some layers)."""
    config = json.loads((path / "adapter_config.json").read_text())
    return max([int(config.get("r", 0)), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


class AdapterSet:
    def __init__(self, model, capacity: int, max_rank: int, cache_dir: Path | None = None) -> None:
        self.model = model
        self.capacity = capacity
        self.max_rank = max_rank
        self.cache_dir = cache_dir
        self.known: dict[str, Adapter] = {}
        self.resident: OrderedDict[str, None] = OrderedDict()
        self.loads = 0
        """Adapters made resident since start (a first load or a reload after eviction)."""

    def fetch(self, name: str, source: str) -> Adapter:
        """Copies an adapter into the cache and checks it; raises vLLM's load errors."""
        try:
            local = fetch_adapter(name, source, self.cache_dir)
        except FetchError as exc:
            # vLLM's LoRAAdapterNotFoundError wording, status and type.
            raise APIError(
                HTTPStatus.NOT_FOUND,
                f"Loading lora {name} failed: No adapter found for {source} ({exc})",
                err_type="NotFoundError",
            ) from exc
        rank = adapter_rank(local)
        if rank > self.max_rank:
            raise APIError(
                HTTPStatus.BAD_REQUEST,
                f"LoRA rank {rank} of adapter {name!r} is greater than max_lora_rank {self.max_rank}",
            )
        return Adapter(name, source, local)

    def add(self, adapter: Adapter) -> None:
        """Registers (or replaces) an adapter and makes it resident."""
        if adapter.name in self.resident:
            self._evict(adapter.name)
        previous = self.known.get(adapter.name)
        self.known[adapter.name] = adapter
        try:
            self._make_resident(adapter.name)
        except APIError:
            if previous is None:
                del self.known[adapter.name]
            else:
                self.known[adapter.name] = previous
            raise

    def remove(self, name: str) -> None:
        if name in self.resident:
            self._evict(name)
        del self.known[name]

    def activate(self, name: str | None) -> None:
        """Points the model at one adapter, or at the bare base model for `None`."""
        if name is None:
            if self.resident:
                self.model.disable_adapters()
            return
        if name not in self.resident:
            self._make_resident(name)
        self.resident.move_to_end(name)
        self.model.enable_adapters()
        self.model.set_adapter(name)

    def _make_resident(self, name: str) -> None:
        while len(self.resident) >= self.capacity:
            self._evict(next(iter(self.resident)))
        adapter = self.known[name]
        try:
            check_adapter_dir(adapter.local_path, name)
            self.model.load_adapter(str(adapter.local_path), adapter_name=name)
        except (FetchError, OSError, ValueError, KeyError, RuntimeError) as exc:
            raise APIError(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"Loading lora {name} failed: {exc}", err_type="InternalServerError"
            ) from exc
        self.resident[name] = None
        self.loads += 1

    def _evict(self, name: str) -> None:
        self.model.delete_adapter(name)
        del self.resident[name]
