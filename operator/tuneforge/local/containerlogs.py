"""Container logs on the local node: where each run of a container writes, and how the
kubelet endpoint reads them back for `kubectl logs`.

A kubelet keeps one log file per run of a container (`<container>/<restartCount>.log`),
so `kubectl logs` shows the current run and `--previous` the one before. The agent does
the same in the Pod's directory: run N of a container writes `<container>.N.log`,
`<container>.log` is a link to the newest run (what a person tails), and the two newest
runs are kept. Which run a request means follows from the Pod's container status alone,
with the kubelet's rules, so a status read a moment late still names the file that holds
that run.

The file is the process's stdout and stderr, written directly: there is no time per line.
So `timestamps`, `sinceSeconds` and `sinceTime` are refused with a message that says why,
rather than answered wrongly; `follow`, `tailLines`, `limitBytes` and `previous` are
honoured as a kubelet honours them.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

CHUNK_BYTES = 64 * 1024
FOLLOW_POLL_SECONDS = 0.25
"""How often a followed log is checked for new output while its container runs: a file
the process writes to directly has nothing to wait on, and four reads a second of an
idle file cost nothing measurable."""
_TAIL_BLOCK = 1024
_INTEGER = re.compile(r"[+-]?[0-9]+")
NO_LINE_TIMES = ("the tuneforge local node keeps a container's output as written, without a time per line, "
                 "so it cannot honour {options}; use tailLines (kubectl logs --tail) or limitBytes instead")


class LogUnavailable(Exception):
    """A log request the node answers with an error: the HTTP status a kubelet answers it
    with, and the message (plain text, which the API server passes on to kubectl)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class LogOptions:
    """The part of PodLogOptions the node honours."""

    follow: bool = False
    previous: bool = False
    tail_lines: int | None = None
    """The last N complete lines; None: all."""
    limit_bytes: int | None = None


# -- where runs write ------------------------------------------------------------------


def current_log(pod_dir: Path, container: str) -> Path:
    """`<container>.log`: the link to the newest run's log."""
    return pod_dir / f"{container}.log"


def run_log(pod_dir: Path, container: str, run: int) -> Path:
    """The log of run `run` of a container (0 for its first start, then its restart count)."""
    return pod_dir / f"{container}.{run}.log"


def open_run_log(pod_dir: Path, container: str, run: int) -> BinaryIO:
    """Opens run `run`'s log for the process to append to, points `<container>.log` at it
    and removes the logs of runs before the previous one (a kubelet keeps those two)."""
    path = run_log(pod_dir, container, run)
    handle = open(path, "ab")
    link = current_log(pod_dir, container)
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.name)
    os.replace(tmp, link)
    for old in pod_dir.glob(f"{container}.*.log"):
        number = old.name[len(container) + 1:-len(".log")]
        if number.isdigit() and int(number) < run - 1:
            old.unlink(missing_ok=True)
    return handle


# -- what a request asks for -----------------------------------------------------------


def _decode_error() -> LogUnavailable:
    return LogUnavailable(400, '{"message": "Unable to decode query."}')


def _flag(query: Mapping[str, Sequence[str]], name: str) -> bool:
    """A query flag as the API machinery decodes it: absent, "0" or "false" are false."""
    values = query.get(name) or []
    return bool(values) and values[0] != "0" and values[0].lower() != "false"


def _integer(query: Mapping[str, Sequence[str]], name: str) -> int | None:
    values = query.get(name) or []
    if not values:
        return None
    if not _INTEGER.fullmatch(values[0]):
        raise _decode_error()
    return int(values[0])


def log_options(query: Mapping[str, Sequence[str]]) -> LogOptions:
    """The options of a `/containerLogs` request, decoded and checked as a kubelet does
    (the legacy `tail=N|all` included): 400 for what does not decode, 422 for what is
    invalid, 400 for what the local node's logs cannot answer (see the module doc).
    Parameters a kubelet does not read (`container`, `insecureSkipTLSVerifyBackend`, which
    is the API server's) are ignored."""
    query = dict(query)
    tail = (query.get("tail") or [""])[0]
    if tail:
        query["tailLines"] = [] if tail == "all" else [tail]
    tail_lines, limit_bytes = _integer(query, "tailLines"), _integer(query, "limitBytes")
    if (tail_lines is not None and tail_lines < 0) or (limit_bytes is not None and limit_bytes < 1):
        raise LogUnavailable(422, '{"message": "Invalid request."}')
    stream = (query.get("stream") or ["All"])[0]
    if stream != "All":
        raise LogUnavailable(400, f"unable to return the given log stream: {stream!r}: the tuneforge local node "
                                  "keeps a container's stdout and stderr in one file")
    unanswerable = ["timestamps"] if _flag(query, "timestamps") else []
    unanswerable += [name for name in ("sinceSeconds", "sinceTime") if query.get(name)]
    if unanswerable:
        raise LogUnavailable(400, NO_LINE_TIMES.format(options=" and ".join(unanswerable)))
    return LogOptions(follow=_flag(query, "follow"), previous=_flag(query, "previous"),
                      tail_lines=tail_lines, limit_bytes=limit_bytes)


def select_run(pod: Mapping[str, Any], container: str, previous: bool) -> int:
    """Which run of `container` a log request for `pod` reads, from the Pod's container
    status, with the kubelet's rules: the running or terminated run, or while the
    container waits to restart the run that just ended; with `previous`, the run before
    the current one. Raises LogUnavailable with the kubelet's status and message when
    there is no such container or no such run."""
    name = pod["metadata"]["name"]
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    declared = [c["name"] for key in ("containers", "initContainers", "ephemeralContainers")
                for c in spec.get(key) or []]
    if container not in declared:
        raise LogUnavailable(404, f'container "{container}" not found in pod "{name}"')
    found = [s for s in status.get("containerStatuses") or [] if s.get("name") == container]
    if not found:
        raise LogUnavailable(400, f'container "{container}" in pod "{name}" is not available')
    state = found[0].get("state") or {}
    count = int(found[0].get("restartCount") or 0)
    last = (found[0].get("lastState") or {}).get("terminated")
    if previous:
        if not last:
            raise LogUnavailable(400, f'previous terminated container "{container}" in pod "{name}" not found')
        return count if "waiting" in state else count - 1
    if "running" in state or "terminated" in state or last:
        return count
    reason = (state.get("waiting") or {}).get("reason")
    if reason:
        raise LogUnavailable(400, f'container "{container}" in pod "{name}" is waiting to start: {reason}')
    raise LogUnavailable(400, f'container "{container}" in pod "{name}" is waiting to start - no logs yet')


# -- reading ---------------------------------------------------------------------------


def tail_start(log: BinaryIO, lines: int) -> int:
    """The offset where the last `lines` complete lines of `log` begin (the kubelet's
    findTailLineStartIndex): an unterminated last line does not count as one."""
    size = log.seek(0, os.SEEK_END)
    left, count, block = size, 0, b""
    while left > 0 and count <= lines:
        start = max(left - _TAIL_BLOCK, 0)
        log.seek(start)
        block = log.read(left - start)
        count += block.count(b"\n")
        left = start
    while count > lines:
        cut = block.index(b"\n") + 1
        block = block[cut:]
        left += cut
        count -= 1
    return left


def _first_lines(chunk: bytes, lines: int) -> tuple[bytes, int]:
    """The part of `chunk` up to its `lines`-th line end, and how many lines are still
    wanted after it."""
    end = -1
    for _ in range(lines):
        end = chunk.find(b"\n", end + 1)
        if end < 0:
            return chunk, lines - chunk.count(b"\n")
    return chunk[:end + 1], 0


async def stream_log(log: BinaryIO, options: LogOptions, running: Callable[[], bool],
                     poll_seconds: float = FOLLOW_POLL_SECONDS) -> AsyncIterator[bytes]:
    """What a kubelet streams for `options`, and closes `log`: from where the last
    `tail_lines` complete lines begin, exactly those lines unless following (an
    unterminated last line only when there are fewer), at most `limit_bytes`; following,
    also what the container writes later, until it is no longer `running` (what it
    wrote before it ended is read to the end first)."""
    with log:
        lines_left = None
        if options.tail_lines is not None:
            log.seek(tail_start(log, options.tail_lines))
            if not options.follow:
                lines_left = options.tail_lines
        budget = options.limit_bytes
        while True:
            ended = not (options.follow and running())
            while lines_left != 0 and budget != 0 and (chunk := log.read(CHUNK_BYTES)):
                if lines_left is not None:
                    chunk, lines_left = _first_lines(chunk, lines_left)
                if budget is not None:
                    chunk = chunk[:budget]
                    budget -= len(chunk)
                yield chunk
            if ended or budget == 0:
                return
            await asyncio.sleep(poll_seconds)
