"""The Pod status the local node agent reports, as pure functions of what it observed.

The Job, ReplicaSet and Deployment controllers, the tuneforge operator and the gateway
read Pod status exactly as they read a kubelet's: phase, container states with exit
codes, reasons, termination messages and restart counts, the Ready condition, podIP. So
these functions follow the kubelet's rules (phase from restart policy and exit codes,
`FallbackToLogsOnError`, the DisruptionTarget condition on node shutdown), and are unit
tested on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

MAX_MESSAGE_BYTES = 4096
"""A kubelet keeps at most 4 KiB of a termination message file..."""
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
"""...and at most the last 80 lines / 2 KiB of the log when falling back to it."""

UNSUPPORTED_IMAGE = "UnsupportedImage"
CONFIG_ERROR = "CreateContainerConfigError"
CRASH_LOOP = "CrashLoopBackOff"


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def timestamp(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


@dataclass
class Terminated:
    exit_code: int
    started_at: datetime | None
    finished_at: datetime
    message: str = ""
    signal: int | None = None
    lost: bool = False
    """The agent restarted and the process was gone: the kubelet's ContainerStatusUnknown."""

    @property
    def reason(self) -> str:
        if self.lost:
            return "ContainerStatusUnknown"
        return "Completed" if self.exit_code == 0 else "Error"

    def to_wire(self) -> dict:
        state = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": timestamp(self.started_at),
            "finishedAt": timestamp(self.finished_at),
        }
        if self.message:
            state["message"] = self.message
        if self.signal is not None:
            state["signal"] = self.signal
        return state


@dataclass
class ContainerRecord:
    """What the agent knows of one container: its current state and its history."""

    name: str
    image: str
    restart_count: int = 0
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str = ""
    running_since: datetime | None = None
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    started: bool = False
    """The startup probe passed (or there is none) since the last start."""
    ready: bool = False

    def next_run(self) -> int:
        """The number of the container's next run: its restart count once it has started
        (each start after a terminated run is a restart)."""
        return self.restart_count + (self.terminated is not None)

    def start(self, at: datetime) -> None:
        self.restart_count = self.next_run()
        if self.terminated is not None:
            self.last_terminated = self.terminated
        self.terminated = None
        self.waiting_reason, self.waiting_message = None, ""
        self.running_since = at
        self.started = self.ready = False

    def finish(self, result: Terminated) -> None:
        self.terminated = result
        self.running_since = None
        self.started = self.ready = False

    def wait(self, reason: str, message: str = "") -> None:
        self.waiting_reason, self.waiting_message = reason, message
        self.ready = False

    def to_wire(self) -> dict:
        last = self.last_terminated
        if self.running_since is not None:
            state = {"running": {"startedAt": timestamp(self.running_since)}}
        elif self.waiting_reason is not None:
            waiting = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
            last = self.terminated or last  # waiting to restart: the run that just ended
        elif self.terminated is not None:
            state = {"terminated": self.terminated.to_wire()}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        return {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready,
            "started": self.running_since is not None and self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {"terminated": last.to_wire()} if last else {},
        }


LOST_MESSAGE = "The container could not be located when the pod was terminated"
SHUTDOWN_MESSAGE = "Pod was terminated in response to imminent node shutdown."


def lost_container(started_at: datetime | None, at: datetime) -> Terminated:
    """A container whose process did not survive the agent (a `make dev` restart)."""
    return Terminated(exit_code=137, started_at=started_at, finished_at=at, message=LOST_MESSAGE, lost=True)


def terminated_from_wire(state: dict | None) -> Terminated | None:
    """A terminated state as reported before (read back after an agent restart)."""
    if not state:
        return None
    return Terminated(exit_code=int(state.get("exitCode", 0)), started_at=parse_timestamp(state.get("startedAt")),
                      finished_at=parse_timestamp(state.get("finishedAt")) or now(),
                      message=state.get("message", ""), signal=state.get("signal"),
                      lost=state.get("reason") == "ContainerStatusUnknown")


def parse_timestamp(value: str | None) -> datetime | None:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) if value else None


def log_tail(text: str) -> str:
    """The end of a log as a kubelet falls back to it: 80 lines, at most 2 KiB."""
    tail = "\n".join(text.splitlines()[-FALLBACK_LOG_LINES:])
    data = tail.encode()[-FALLBACK_LOG_BYTES:]
    return data.decode(errors="ignore")


def termination_message(policy: str, file_text: str, log_text: str, exit_code: int) -> str:
    """The termination message: the file's content; with FallbackToLogsOnError, the log
    tail when the file is empty and the container failed."""
    message = file_text.encode()[:MAX_MESSAGE_BYTES].decode(errors="ignore").strip()
    if not message and policy == "FallbackToLogsOnError" and exit_code != 0:
        message = log_tail(log_text).strip()
    return message


def exit_code_of(returncode: int) -> tuple[int, int | None]:
    """A Popen return code as (container exit code, signal): a process killed by a signal
    exits 128 + signal in a container's shell convention."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


def should_restart(restart_policy: str, exit_code: int) -> bool:
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


def restart_delay(restart_count: int) -> float:
    """CrashLoopBackOff: 10 s, doubling, at most 5 minutes."""
    return float(min(10 * 2 ** max(restart_count, 0), 300))


def pod_phase(restart_policy: str, records: list[ContainerRecord], terminal_by_node: bool) -> str:
    """The kubelet's phase rule for one Pod."""
    if any(r.running_since is not None for r in records):
        return "Running"
    if not records or any(r.terminated is None for r in records):
        return "Failed" if terminal_by_node else "Pending"
    all_ok = all(r.terminated.exit_code == 0 for r in records)
    if terminal_by_node:
        return "Succeeded" if all_ok else "Failed"
    if restart_policy == "Always":
        return "Running"
    if restart_policy == "OnFailure":
        return "Succeeded" if all_ok else "Running"
    return "Succeeded" if all_ok else "Failed"


@dataclass
class PodConditions:
    """Condition transitions, so lastTransitionTime only moves when a status changes."""

    since: dict[str, tuple[str, datetime, str, str]] = field(default_factory=dict)

    def set(self, kind: str, status: bool, at: datetime, reason: str = "", message: str = "") -> None:
        value = "True" if status else "False"
        current = self.since.get(kind)
        if current is None or current[0] != value or (current[2], current[3]) != (reason, message):
            changed_at = at if current is None or current[0] != value else current[1]
            self.since[kind] = (value, changed_at, reason, message)

    def to_wire(self) -> list[dict]:
        conditions = []
        for kind, (value, at, reason, message) in self.since.items():
            condition = {"type": kind, "status": value, "lastProbeTime": None,
                         "lastTransitionTime": timestamp(at)}
            if reason:
                condition["reason"] = reason
            if message:
                condition["message"] = message
            conditions.append(condition)
        return conditions


def pod_status(
    *,
    phase: str,
    pod_ip: str,
    host_ip: str,
    start_time: datetime,
    records: list[ContainerRecord],
    conditions: PodConditions,
    reason: str | None = None,
    message: str | None = None,
) -> dict:
    """The full `status` of a Pod (sent as a merge patch, so lists are replaced whole)."""
    status = {
        "phase": phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": timestamp(start_time),
        "conditions": conditions.to_wire(),
        "containerStatuses": [r.to_wire() for r in records],
    }
    status["reason"] = reason
    status["message"] = message
    return status
