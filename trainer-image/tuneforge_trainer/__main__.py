"""`tuneforge-train --run run.json`: train one run, or end with a termination message.

Exit status 0 means `adapter/` and `result.json` are published; the others are
`TrainerExit`'s. A failure writes one line of JSON {code, message, param} to the
termination log (what Kubernetes shows as the pod's termination message, and what the
controller copies into the job's error). A fatal one also marks progress.json failed and
logs an error event; a transient one logs a warning event, since the Job will try again.
A run of several processes goes through `launch`, which reports for the whole group.
"""

from __future__ import annotations

import argparse
import sys
import traceback

import pydantic

from tuneforge.contracts import RUN_FILE, ErrorInfo, TrainerExit, TrainingProgress, TrainingRun
from tuneforge.storage import ArtifactStore

from tuneforge_trainer import launch
from tuneforge_trainer.distributed import StopRequest, launched_by_torchrun
from tuneforge_trainer.errors import outcome
from tuneforge_trainer.loop import train
from tuneforge_trainer.report import Reporter, write_termination_message


def _report(status: TrainerExit, info: ErrorInfo, output_uri: str | None) -> int:
    write_termination_message(info)
    if output_uri is None or status == TrainerExit.preempted:
        return int(status)
    try:
        reporter = Reporter(ArtifactStore(output_uri))
        if status == TrainerExit.fatal:
            reporter.event(info.message, level="error", data={"code": info.code, "param": info.param})
            reporter.progress(TrainingProgress(status="failed"), force=True)
        else:
            reporter.event(f"Training was interrupted and will resume from the newest checkpoint: {info.message}",
                           level="warn", data={"code": info.code})
        reporter.close()
    except Exception:  # the store itself may be what failed; the termination log has it
        traceback.print_exc()
    return int(status)


def _train(run: TrainingRun) -> int:
    stop = StopRequest()
    stop.install()
    try:
        train(run, stop=stop)
    except Exception as exc:
        status, info = outcome(exc)
        if status != TrainerExit.preempted:
            traceback.print_exc()
        if launched_by_torchrun():
            launch.record_outcome(status, info)
            return int(status)
        return _report(status, info, run.output_uri)
    return int(TrainerExit.succeeded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneforge-train", description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=RUN_FILE, help="path of the TrainingRun JSON")
    args = parser.parse_args(argv)
    try:
        run = TrainingRun.load(args.run)
    except (OSError, pydantic.ValidationError) as exc:
        info = ErrorInfo(code="invalid_run_spec", message=str(exc).splitlines()[0], param="run")
        return _report(TrainerExit.fatal, info, None)
    if launch.needs_launcher(run) and not launched_by_torchrun():
        status, info = launch.run_group(run, args.run)
        return int(status) if info is None else _report(status, info, run.output_uri)
    return _train(run)


if __name__ == "__main__":
    sys.exit(main())
