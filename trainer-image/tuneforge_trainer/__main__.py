"""`tuneforge-train --run run.json`: train one run, or fail with a termination message.

Exit status 0 means `adapter/` and `result.json` are published. Any failure writes one
line of JSON {code, message, param} to the termination log (what Kubernetes shows as the
pod's termination message, and what the controller copies into the job's error), marks
progress.json failed, logs an error event, and exits 1.
"""

from __future__ import annotations

import argparse
import sys
import traceback

import pydantic

from tuneforge.contracts import RUN_FILE, ErrorInfo, TrainingProgress, TrainingRun
from tuneforge.storage import ArtifactStore

from tuneforge_trainer.errors import TrainerError
from tuneforge_trainer.loop import train
from tuneforge_trainer.report import Reporter, write_termination_message


def _fail(info: ErrorInfo, output_uri: str | None) -> int:
    write_termination_message(info)
    if output_uri is not None:
        try:
            reporter = Reporter(ArtifactStore(output_uri))
            reporter.event(info.message, level="error", data={"code": info.code, "param": info.param})
            reporter.progress(TrainingProgress(status="failed"), force=True)
        except Exception:  # the store itself may be what failed; the termination log has it
            traceback.print_exc()
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneforge-train", description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=RUN_FILE, help="path of the TrainingRun JSON")
    args = parser.parse_args(argv)
    try:
        run = TrainingRun.load(args.run)
    except (OSError, pydantic.ValidationError) as exc:
        return _fail(ErrorInfo(code="invalid_run_spec", message=str(exc).splitlines()[0], param="run"), None)
    try:
        train(run)
    except TrainerError as exc:
        return _fail(exc.to_error_info(), run.output_uri)
    except Exception as exc:
        traceback.print_exc()
        return _fail(ErrorInfo(code="training_failed", message=f"{type(exc).__name__}: {exc}"), run.output_uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
