"""How the node's kubelet endpoint reads container logs: the request's options as a kubelet
decodes them, which run a request means, and the bytes it streams (tail, limit, follow)."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tuneforge.local.containerlogs import (
    LogOptions,
    LogUnavailable,
    current_log,
    log_options,
    open_run_log,
    run_log,
    select_run,
    stream_log,
    tail_start,
)
from tuneforge.local.podstatus import ContainerRecord, Terminated

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


# -- options ---------------------------------------------------------------------------


@pytest.mark.parametrize("query, options", [
    ({}, LogOptions()),
    ({"follow": ["true"], "previous": ["1"]}, LogOptions(follow=True, previous=True)),
    ({"follow": ["false"], "previous": ["0"]}, LogOptions()),
    ({"follow": [""]}, LogOptions(follow=True)),  # only absent, "0" and "false" are false
    ({"tailLines": ["3"], "limitBytes": ["100"]}, LogOptions(tail_lines=3, limit_bytes=100)),
    ({"tail": ["7"]}, LogOptions(tail_lines=7)),
    ({"tail": ["all"], "tailLines": ["2"]}, LogOptions()),
    ({"container": ["x"], "insecureSkipTLSVerifyBackend": ["true"], "stream": ["All"]}, LogOptions()),
    ({"timestamps": ["false"]}, LogOptions()),
])
def test_options_are_decoded_as_a_kubelet_decodes_them(query, options):
    assert log_options(query) == options


@pytest.mark.parametrize("query, status, message", [
    ({"tailLines": ["x"]}, 400, '{"message": "Unable to decode query."}'),
    ({"limitBytes": ["1.5"]}, 400, '{"message": "Unable to decode query."}'),
    ({"tailLines": ["-1"]}, 422, '{"message": "Invalid request."}'),
    ({"limitBytes": ["0"]}, 422, '{"message": "Invalid request."}'),
])
def test_bad_options_get_the_kubelets_answers(query, status, message):
    with pytest.raises(LogUnavailable) as refused:
        log_options(query)
    assert (refused.value.status, refused.value.message) == (status, message)


@pytest.mark.parametrize("query, named", [
    ({"timestamps": ["true"]}, "timestamps"),
    ({"sinceSeconds": ["60"]}, "sinceSeconds"),
    ({"sinceTime": ["2026-01-01T00:00:00Z"], "timestamps": ["true"]}, "timestamps and sinceTime"),
])
def test_options_that_need_line_times_are_refused_saying_why(query, named):
    with pytest.raises(LogUnavailable) as refused:
        log_options(query)
    assert refused.value.status == 400
    assert f"cannot honour {named};" in refused.value.message
    assert "without a time per line" in refused.value.message


def test_a_single_stream_is_refused():
    with pytest.raises(LogUnavailable) as refused:
        log_options({"stream": ["Stderr"]})
    assert refused.value.status == 400 and "'Stderr'" in refused.value.message


# -- which run -------------------------------------------------------------------------


def _pod(record: ContainerRecord | None, containers: tuple[str, ...] = ("main",)) -> dict:
    statuses = [record.to_wire()] if record else []
    return {"metadata": {"name": "p"}, "spec": {"containers": [{"name": c} for c in containers]},
            "status": {"containerStatuses": statuses}}


def _runs(record: ContainerRecord) -> tuple[int | str, int | str]:
    """(the run a plain request reads, the run --previous reads), or the refusal's message."""
    result = []
    for previous in (False, True):
        try:
            result.append(select_run(_pod(record), "main", previous))
        except LogUnavailable as exc:
            result.append(exc.message)
    return tuple(result)


def test_the_run_follows_the_status_the_worker_reports():
    """Through a container's life as the pod worker records it, each request names the run
    whose log file the worker opened (`next_run` at each start)."""
    record = ContainerRecord(name="main", image="i")
    assert _runs(record) == ('container "main" in pod "p" is waiting to start: ContainerCreating',
                             'previous terminated container "main" in pod "p" not found')
    opened = [record.next_run()]
    record.start(T0)
    assert _runs(record) == (0, 'previous terminated container "main" in pod "p" not found')
    record.finish(Terminated(exit_code=1, started_at=T0, finished_at=T0))
    record.wait("CrashLoopBackOff", "back-off 10s")
    assert _runs(record) == (0, 0)  # waiting to restart: both show the run that just ended
    opened.append(record.next_run())
    record.start(T0)
    assert _runs(record) == (1, 0)
    record.finish(Terminated(exit_code=0, started_at=T0, finished_at=T0))
    assert _runs(record) == (1, 0)
    assert opened == [0, 1]


def test_a_waiting_container_or_one_without_status_has_no_log():
    record = ContainerRecord(name="main", image="i")
    record.wait("CreateContainerConfigError", "configmap x not found")
    assert _runs(record)[0] == 'container "main" in pod "p" is waiting to start: CreateContainerConfigError'
    with pytest.raises(LogUnavailable) as unknown:
        select_run(_pod(record), "nope", False)
    assert (unknown.value.status, unknown.value.message) == (404, 'container "nope" not found in pod "p"')
    with pytest.raises(LogUnavailable) as unreported:
        select_run(_pod(None, ("main", "sidecar")), "sidecar", False)
    assert (unreported.value.status, unreported.value.message) == (
        400, 'container "sidecar" in pod "p" is not available')


# -- the files -------------------------------------------------------------------------


def test_each_run_has_its_file_and_the_link_names_the_newest(tmp_path: Path):
    for run in range(4):
        with open_run_log(tmp_path, "main", run) as log:
            log.write(f"run {run}\n".encode())
    with open_run_log(tmp_path, "main", 3) as log:  # the same run again appends
        log.write(b"more\n")
    with open_run_log(tmp_path, "main-sidecar", 0):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "main-sidecar.0.log", "main-sidecar.log", "main.2.log", "main.3.log", "main.log"]
    assert current_log(tmp_path, "main").read_text() == "run 3\nmore\n"
    assert run_log(tmp_path, "main", 2).read_text() == "run 2\n"


@pytest.mark.parametrize("text, lines, start", [
    (b"", 3, 0),
    (b"a\nb\nc\n", 0, 6),
    (b"a\nb\nc\n", 2, 2),
    (b"a\nb\nc\n", 9, 0),
    (b"a\nb\nc", 1, 2),  # the unterminated "c" is not a line
    (b"x" * 3000 + b"\n" + b"y" * 3000 + b"\n", 1, 3001),  # across the 1 KiB blocks
])
def test_tail_start_is_where_the_last_complete_lines_begin(text, lines, start):
    assert tail_start(io.BytesIO(text), lines) == start


async def _read(text: bytes, options: LogOptions, running=lambda: False) -> bytes:
    return b"".join([chunk async for chunk in stream_log(io.BytesIO(text), options, running)])


@pytest.mark.parametrize("text, options, shown", [
    (b"a\nb\nc\n", LogOptions(), b"a\nb\nc\n"),
    (b"a\nb\nc\n", LogOptions(tail_lines=2), b"b\nc\n"),
    (b"a\nb\nc", LogOptions(tail_lines=1), b"b\n"),  # the kubelet's exact lines, without "c"
    (b"a\nb\nc", LogOptions(tail_lines=5), b"a\nb\nc"),  # fewer lines: the unterminated one too
    (b"a\nb\nc\n", LogOptions(tail_lines=0), b""),
    (b"line 1\nline 2\n", LogOptions(limit_bytes=10), b"line 1\nlin"),
    (b"a\nb\nc\n", LogOptions(tail_lines=2, limit_bytes=3), b"b\nc"),
    (b"a\nb\nc", LogOptions(tail_lines=1, follow=True), b"b\nc"),
])
async def test_what_is_streamed(text, options, shown):
    assert await _read(text, options) == shown


async def test_following_reads_until_the_run_ends_and_then_to_the_end(tmp_path: Path):
    path = tmp_path / "main.0.log"
    path.write_bytes(b"first\n")
    checks = []

    def running() -> bool:
        """The process writes a line between checks, then ends having written one more."""
        checks.append(len(checks))
        with open(path, "ab") as log:
            log.write(f"line {len(checks)}\n".encode())
        return len(checks) < 3

    follow = stream_log(open(path, "rb"), LogOptions(follow=True), running, poll_seconds=0)
    assert b"".join([chunk async for chunk in follow]) == b"first\nline 1\nline 2\nline 3\n"
    assert len(checks) == 3


async def test_following_stops_at_the_byte_limit():
    follow = stream_log(io.BytesIO(b"0123456789"), LogOptions(follow=True, limit_bytes=4), lambda: True,
                        poll_seconds=0)
    assert [chunk async for chunk in follow] == [b"0123"]
