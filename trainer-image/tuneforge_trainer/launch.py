"""One process per GPU, on one node or many, started by PyTorch's own launcher.

`tuneforge-train` stays the container's main process. When the run asks for more than one
process (or for FSDP, which needs the launcher's environment even on one GPU) it starts
`torchrun` with the run's shape and waits for it:

- one node: `--standalone` (a rendezvous store on a free local port);
- several nodes (an Indexed Job): c10d rendezvous at `<job>-0.<service>:29400`, hosted
  by the Pod of index 0 (`is_host`), the node rank from `JOB_COMPLETION_INDEX`.

torchrun gets no restarts of its own: a failed group fails its Pod, and Kubernetes (the
Job's backoffLimit, or the controller's group restart for multi-node runs) starts it
again, from the newest checkpoint. Each worker records how it ended in a file of its own;
the launcher turns those into the one exit status and termination message the Pod ends
with (`TrainerExit`): a fatal error anywhere wins, then a stop request, else the fault was
transient. SIGTERM is forwarded to torchrun, which forwards it to every worker and waits
`SHUTDOWN_TIMEOUT_S` for their last checkpoint before killing them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tuneforge.contracts import ErrorInfo, TrainerExit, TrainingRun

OUTCOME_DIR_ENV = "TUNEFORGE_OUTCOME_DIR"
NODE_RANK_ENV = "JOB_COMPLETION_INDEX"
SHUTDOWN_TIMEOUT_S = 90
"""Below the trainer Pod's terminationGracePeriodSeconds (120), so the workers' last
checkpoint is written before the kubelet's SIGKILL."""


def needs_launcher(run: TrainingRun) -> bool:
    return run.distributed.world_size > 1 or run.distributed.strategy == "fsdp"


def torchrun_argv(run: TrainingRun, run_file: str, *, node_rank: int) -> list[str]:
    """The launcher's command line for this node of the run."""
    shape = run.distributed
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={shape.nodes}",
            f"--nproc-per-node={shape.processes_per_node}", "--max-restarts=0"]
    if shape.nodes == 1:
        argv.append("--standalone")
    else:
        if not shape.rendezvous_host:
            raise ValueError("a run on several nodes needs distributed.rendezvous_host")
        argv += ["--rdzv-backend=c10d", f"--rdzv-endpoint={shape.rendezvous_host}:{shape.rendezvous_port}",
                 f"--rdzv-id={run.job_id}", f"--rdzv-conf=is_host={str(node_rank == 0).lower()}"]
    # "--" ends torchrun's own options: it would read "--run" as an abbreviation of its "--run-path".
    return [*argv, "-m", "tuneforge_trainer", "--", "--run", run_file]


def record_outcome(status: TrainerExit, info: ErrorInfo) -> None:
    """A worker's account of how it ended, for the launcher to read."""
    directory = os.environ.get(OUTCOME_DIR_ENV)
    if directory:
        path = Path(directory) / f"rank-{os.environ.get('RANK', '0')}.json"
        path.write_text(json.dumps({"status": int(status), "error": info.model_dump()}))


def read_outcomes(directory: Path) -> list[tuple[TrainerExit, ErrorInfo]]:
    outcomes = []
    for path in sorted(directory.glob("rank-*.json")):
        record = json.loads(path.read_text())
        outcomes.append((TrainerExit(record["status"]), ErrorInfo.model_validate(record["error"])))
    return outcomes


def decide(returncode: int, outcomes: list[tuple[TrainerExit, ErrorInfo]], *,
           signalled: bool) -> tuple[TrainerExit, ErrorInfo | None]:
    """The group's exit status from torchrun's and the workers' own."""
    if returncode == 0:
        return TrainerExit.succeeded, None
    for wanted in (TrainerExit.fatal, TrainerExit.preempted, TrainerExit.retryable):
        for status, info in outcomes:
            if status == wanted:
                return status, info
    if signalled:
        return TrainerExit.preempted, ErrorInfo(code="preempted", message="stopped by SIGTERM")
    return TrainerExit.retryable, ErrorInfo(
        code="transient_failure",
        message=f"a training process ended without a report (torchrun exited {returncode}); "
        "killed by the kernel (host memory) or lost its peers",
    )


def run_group(run: TrainingRun, run_file: str) -> tuple[TrainerExit, ErrorInfo | None]:
    """Runs torchrun for this node and waits; returns how the group ended."""
    node_rank = int(os.environ.get(NODE_RANK_ENV, "0"))
    with tempfile.TemporaryDirectory(prefix="tuneforge-outcomes-") as directory:
        env = {**os.environ, OUTCOME_DIR_ENV: directory, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT_S)}
        child = subprocess.Popen(torchrun_argv(run, run_file, node_rank=node_rank), env=env)
        signalled = False

        def forward(signum, frame) -> None:
            nonlocal signalled
            signalled = True
            child.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            returncode = child.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        return decide(returncode, read_outcomes(Path(directory)), signalled=signalled)
