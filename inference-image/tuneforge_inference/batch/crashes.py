"""Crash-loop detection: which requests to isolate and which to give up on.

A request whose processing kills the runner (an answer too large for its memory, a bug
that one answer triggers) would otherwise kill every restarted runner in turn until the
Job's retry budget is spent and the whole batch fails. The journal charges a crash to
each request in flight when a runner process died (its dispatched log). A charged request
is a suspect: it is sent again before anything else, alone, so that a further death is
charged to the one request that caused it. At CRASH_LIMIT charges the request gets an error
line instead of another try. Requests that merely shared the first death with the culprit
finish in that solo phase and are never failed.
"""

from __future__ import annotations

from tuneforge_inference.batch.records import Outcome

CRASH_LIMIT = 3


def culprits(crashes: dict[str, int]) -> dict[str, int]:
    """Requests charged often enough to be failed instead of sent."""
    return {custom_id: n for custom_id, n in crashes.items() if n >= CRASH_LIMIT}


def is_suspect(crashes: dict[str, int], custom_id: str) -> bool:
    """Charged, but not yet often enough to be failed: to be sent alone."""
    return 0 < crashes.get(custom_id, 0) < CRASH_LIMIT


def crashed(custom_id: str, crashes: int) -> Outcome:
    """The error line of a culprit. Every charge after the first was taken while it was the
    only request in flight, which is what makes the blame exact."""
    return Outcome(
        custom_id,
        error_code="runner_crashed",
        error_message=(
            f"The batch runner died {crashes} times while this request was in flight, the last "
            f"{crashes - 1} times with no other request in flight, so it was not sent again."
        ),
    )
