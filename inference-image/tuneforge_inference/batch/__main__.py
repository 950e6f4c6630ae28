"""`tuneforge-batch --run batch.json`: the batch runner's command line.

Exit codes (the controller reads them from the Job's Pod):
  0    the batch reached a final status: completed, cancelled, expired, or failed (an
       invalid input, or the controller's finalize marker). The outcome is in
       progress.json, not in the exit code, so the Job succeeds and Kubernetes does not
       retry a batch that is already decided.
  1    the runner cannot run this batch at all (an unreadable spec, the API key missing):
       a new Pod would fail alike, so the Job's podFailurePolicy fails it at once and the
       controller finalizes the batch with what it finished. The message goes to the
       termination log as one line of JSON (ErrorInfo with code `runner_error`).
  75   the runner failed on something a new Pod may not meet (the store unreachable past
       its retries, a bug one answer triggers): the same termination message, and the
       Job's retry resumes from the journal within the batch's retry budget; a request
       that keeps killing the runner this way ends `runner_crashed` (see crashes.py).
  2    bad command-line usage (argparse).
  143  interrupted: a new Pod resumes from the journal. SIGTERM/SIGINT mean the Pod is
       going away (drain, eviction, preemption), not that the batch should end: in-flight
       requests had the cancel grace period to finish, the journal is durable and
       progress.json still says in_progress, so the Job's retry carries on.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback

from pydantic import ValidationError

from tuneforge.config import settings
from tuneforge.contracts import RUN_FILE, BatchRun, ErrorInfo, TrainerExit

from tuneforge_inference.batch.runner import Interrupted, RunnerError, run_batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneforge-batch", description="Run one OpenAI-style batch.")
    parser.add_argument("--run", default=RUN_FILE, help="path of the BatchRun spec (JSON)")
    args = parser.parse_args(argv)
    try:
        spec = BatchRun.load(args.run)
    except (OSError, ValidationError) as exc:
        return _failed(exc, TrainerExit.fatal)
    try:
        status = asyncio.run(run_batch(spec))
    except Interrupted:
        print(f"batch {spec.batch_id}: interrupted; a new Pod resumes from the journal", file=sys.stderr)
        return int(TrainerExit.preempted)
    except RunnerError as exc:
        return _failed(exc, TrainerExit.fatal)
    except Exception as exc:  # noqa: BLE001 - any failure must reach the termination log
        return _failed(exc, TrainerExit.retryable)
    print(f"batch {spec.batch_id}: {status}", file=sys.stderr)
    return 0


def _failed(exc: Exception, exit_code: TrainerExit) -> int:
    traceback.print_exc()
    _write_termination_log(ErrorInfo(code="runner_error", message=f"{type(exc).__name__}: {exc}"))
    return int(exit_code)


def _write_termination_log(error: ErrorInfo) -> None:
    line = error.model_dump_json(exclude_none=True)
    try:
        with open(settings().termination_log, "w") as handle:
            handle.write(line + "\n")
    except OSError:
        print(f"cannot write the termination log {settings().termination_log}", file=sys.stderr)
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
