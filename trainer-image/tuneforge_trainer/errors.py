"""The trainer's own failures, and how every failure maps onto an exit status.

Every failure the user can act on (bad data, a model that cannot be loaded, QLoRA asked
for without a GPU) is raised as a `TrainerError` with a stable code, so the controller can
copy the termination message into the job's `error` field unchanged; those exit
`TrainerExit.fatal` and the Job fails at once. Faults a new Pod may not meet again (an
object store still failing after its retries, a lost peer or an NCCL timeout, a CUDA error,
running out of GPU memory) exit `TrainerExit.retryable`, which the Job retries within its
backoffLimit from the newest checkpoint.
"""

from __future__ import annotations

import socket

import torch

from tuneforge import storage
from tuneforge.contracts import ErrorInfo, TrainerExit


class TrainerError(Exception):
    """A failure with an OpenAI-style error code; the process exits non-zero with it."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def to_error_info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, param=self.param)


class Preempted(Exception):
    """SIGTERM arrived (pause, Kueue preemption, node drain); the newest finished step is
    checkpointed when training had begun."""


TRANSIENT_MARKERS = ("nccl", "cuda error", "cublas", "cudnn", "gloo", "connection reset", "timed out",
                     "broken pipe", "socket", "rendezvous")


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a fault of the machine, the network or a peer rather than of the
    request: GPU memory, CUDA and collective failures, store and network errors."""
    if isinstance(exc, TrainerError):
        return False
    if storage.is_transient(exc):  # the store's own rules: 5xx, throttling, resets, timeouts
        return True
    if isinstance(exc, torch.cuda.OutOfMemoryError | TimeoutError | ConnectionError | socket.timeout):
        return True
    if isinstance(exc, torch.distributed.DistError):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, RuntimeError | OSError) and any(marker in text for marker in TRANSIENT_MARKERS)


def outcome(exc: BaseException) -> tuple[TrainerExit, ErrorInfo]:
    """The exit status and the termination message for a failure."""
    if isinstance(exc, TrainerError):
        return TrainerExit.fatal, exc.to_error_info()
    if isinstance(exc, Preempted):
        return TrainerExit.preempted, ErrorInfo(code="preempted", message=str(exc) or "stopped by SIGTERM")
    message = f"{type(exc).__name__}: {exc}".splitlines()[0][:2000]
    if is_transient(exc):
        return TrainerExit.retryable, ErrorInfo(code="transient_failure", message=message)
    return TrainerExit.fatal, ErrorInfo(code="training_failed", message=message)
