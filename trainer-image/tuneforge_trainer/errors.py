"""The trainer's own failures, in the same {code, message, param} shape as dataset errors.

Every failure the user can act on (bad data, a model that cannot be loaded, QLoRA asked
for without a GPU) is raised as a `TrainerError` with a stable code, so the controller can
copy the termination message into the job's `error` field unchanged.
"""

from __future__ import annotations

from tuneforge.contracts import ErrorInfo


class TrainerError(Exception):
    """A failure with an OpenAI-style error code; the process exits non-zero with it."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def to_error_info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, param=self.param)
