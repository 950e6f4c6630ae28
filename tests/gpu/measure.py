"""What the GPU check measures: the device's bf16 matmul peak, FLOPs per trained token,
and the device memory a running trainer holds.

MFU is reported against the *measured* peak of this device rather than a datasheet
number, so a throttled or shared GPU does not make the trainer look worse than it is;
the datasheet figure is given beside it for comparison with published MFU numbers.
"""

from __future__ import annotations

import threading

import torch

DATASHEET_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
"""Dense bf16 tensor-core peaks (no sparsity) of the GPUs the platform is sized for."""

FLOPS_PER_TOKEN_FORMULA = (
    "flops_per_token = 4*N_blocks + 6*N_lora + 4*V*d*f_target + 6*L*d_attn*S_eff. "
    "N_blocks: decoder-layer weights, frozen (forward 2N + input gradients 2N, no weight gradients); "
    "N_lora: adapter weights (forward, input and weight gradients); "
    "V*d: the tied output head, which the trainer runs only at target positions "
    "(f_target = loss-carrying tokens / tokens); "
    "attention is causal within each example: S_eff = sum(n_i^2) / sum(n_i) over example lengths n_i, "
    "L layers, d_attn = heads * head_dim. "
    "Recomputation under gradient checkpointing and 4-bit dequantization are not counted (model FLOPs). "
    "mfu = tokens_per_s * flops_per_token / (world_size * peak)."
)


def matmul_peak(device: torch.device, *, size: int = 8192, repeats: int = 20, trials: int = 5) -> dict:
    """Best-of-`trials` bf16 throughput of `repeats` back-to-back size^3 matmuls, timed
    with CUDA events after a warm-up (clocks ramp up and cuBLAS picks its kernel first)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    torch.cuda.synchronize(device)
    best = 0.0
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            torch.matmul(a, b)
        end.record()
        end.synchronize()
        best = max(best, 2 * size**3 * repeats / (start.elapsed_time(end) / 1000))
    return {"peak_flops": best, "size": size, "repeats": repeats, "trials": trials}


def datasheet_peak(device_name: str) -> float | None:
    return next((flops for gpu, flops in DATASHEET_BF16_FLOPS.items() if gpu in device_name), None)


def flops_per_token(config, *, n_blocks: int, n_lora: int, s_eff: float, f_target: float) -> float:
    """Model FLOPs per trained token of LoRA training; see FLOPS_PER_TOKEN_FORMULA."""
    d_attn = config.num_attention_heads * config.head_dim
    return (4 * n_blocks + 6 * n_lora + 4 * config.vocab_size * config.hidden_size * f_target
            + 6 * config.num_hidden_layers * d_attn * s_eff)


def device_memory_in_use() -> int | None:
    """Bytes in use on the busiest visible GPU, whoever allocated them (cudaMemGetInfo is
    device-wide, so it sees the trainer's processes from this one)."""
    if not torch.cuda.is_available():
        return None
    used = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        used.append(total - free)
    return max(used)


class MemoryMonitor:
    """Samples the device memory in use while a trainer subprocess runs: the trainer's
    own figure is one process's allocator peak, this one is what the device held (CUDA
    contexts, allocator caches, every process of a group). Use as a context manager."""

    def __init__(self, *, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemoryMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            used = device_memory_in_use()
            if used is None:
                return
            self.peak_bytes = max(self.peak_bytes or 0, used)
            self._stop.wait(self.interval_s)
