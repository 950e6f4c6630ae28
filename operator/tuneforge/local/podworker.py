"""One Pod on the local node: its container processes, probes and status, in one thread.

The worker is the kubelet's pod worker in small: it starts each container as a process
(see `tuneforge.local.pods` for how a container becomes a process), restarts it as the
restart policy says, runs its probes, reports status whenever it changes, and on
deletion sends SIGTERM to the process group, SIGKILL after the grace period, and then
removes the Pod. Everything it cannot do becomes a waiting reason and an Event, never an
exception that takes the agent down.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from tuneforge.local import podstatus
from tuneforge.local.containerlogs import open_run_log
from tuneforge.local.hosts import HOSTS_FILE, OwnNames, needs_own_names, pod_hostname
from tuneforge.local.nodeapi import NodeApi
from tuneforge.local.pods import (
    ImageCatalog,
    MissingReference,
    PodPlace,
    ProcessPlan,
    UnsupportedContainer,
    plan_container,
)
from tuneforge.local.podstatus import ContainerRecord, PodConditions, Terminated
from tuneforge.local.probes import ProbeSpecError, ProbeState, http_probe, http_target

log = logging.getLogger("tuneforge.local.node")
TICK_SECONDS = 0.5
CONFIG_RETRY_SECONDS = 2.0
DEFAULT_GRACE_SECONDS = 30


@dataclass(frozen=True)
class NodeContext:
    """What every worker of one node shares."""

    api: NodeApi
    catalog: ImageCatalog
    base_env: Mapping[str, str]
    capacity: Mapping[str, str]
    pods_dir: Path
    claims_dir: Path
    own_names: OwnNames | str
    """How Pods get their own /etc/hosts and hostname here, or why they cannot."""
    host_ip: str = "127.0.0.1"


def pod_dir_name(pod: Mapping[str, Any]) -> str:
    """`<namespace>_<name>_<uid>`: one directory per Pod incarnation, as a kubelet's pod dirs."""
    meta = pod["metadata"]
    return f"{meta['namespace']}_{meta['name']}_{meta['uid']}"


def _process_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_pid_file(path: Path, pid: int) -> None:
    """`<pid> <start time>`: the start time tells a recycled pid from our process."""
    path.write_text(f"{pid} {_process_start_time(pid) or ''}\n")


def kill_orphan(pid_file: Path) -> bool:
    """Kills the process group a previous agent left running, if it is still the same one."""
    try:
        pid_text, _, started = pid_file.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    if not started or _process_start_time(pid) != started:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Running:
    process: subprocess.Popen
    plan: ProcessPlan
    started: float
    run: int
    """Which run of the container this is (0, then its restart count): its log is that run's."""
    probes: dict[str, ProbeState] = field(default_factory=dict)


class PodWorker:
    def __init__(self, node: NodeContext, pod: dict, pod_ip: str, on_exit: Callable[[str], None]) -> None:
        self.name = f"pod-{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self.node = node
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        self.pod_ip = pod_ip
        self.on_exit = on_exit
        self.updates: queue.Queue[dict | None] = queue.Queue()
        self.shutdown_grace: float | None = None
        self.place = PodPlace(root=node.pods_dir / pod_dir_name(pod), pod_ip=pod_ip,
                              node_name=node.api.node_name, host_ip=node.host_ip)
        self.hosts_file = self.place.root / HOSTS_FILE
        """The Pod's managed /etc/hosts, which the agent keeps up to date."""
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.containers = {c["name"]: c for c in spec.get("containers") or []}
        previous = {s["name"]: s for s in (pod.get("status") or {}).get("containerStatuses") or []}
        self.records = {
            name: ContainerRecord(name=name, image=c.get("image", ""),
                                  restart_count=(previous.get(name) or {}).get("restartCount", 0))
            for name, c in self.containers.items()
        }
        self.running: dict[str, Running] = {}
        self.next_start: dict[str, float] = dict.fromkeys(self.containers, 0.0)
        self.conditions = PodConditions()
        self.start_time = podstatus.parse_timestamp((pod.get("status") or {}).get("startTime")) or podstatus.now()
        self.unsupported: str | None = None
        self.disrupted: str | None = None
        self.gone = False
        self.finished = False
        """The Pod reached its end on this node; later (older) versions of it are ignored."""
        self._last_sent: dict | None = None
        self._announced: set[tuple[str, str]] = set()

    # -- control from the agent --------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def update(self, pod: dict | None) -> None:
        """The watch saw a new version of the Pod (None: it is gone)."""
        self.updates.put(pod)

    def process_of(self, container: str, run: int) -> subprocess.Popen | None:
        """The process of that run of the container while the worker holds it as running
        (read from other threads: the kubelet endpoint follows its log until it exits)."""
        running = self.running.get(container)
        return running.process if running is not None and running.run == run else None

    def shut_down(self, grace: float) -> None:
        """The node stops: terminate within `grace` seconds and report as after a node shutdown."""
        self.shutdown_grace = grace
        self.updates.put(self.pod)

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod worker %s failed", self.name)
            self._kill_all(0)
        finally:
            self.on_exit(self.uid)

    def _run(self) -> None:
        self.place.root.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._check_support()
        while True:
            if self.gone:
                self._kill_all(0)
                return
            if self.shutdown_grace is not None:
                self._stop_for_shutdown()
                return
            if self.pod["metadata"].get("deletionTimestamp"):
                self._delete()
                self.finished = True
                return
            if self.unsupported is None and self.disrupted is None:
                self._start_due()
                self._reap()
                self._probe()
            reported = self._push()
            if reported and self._terminal():
                self.finished = True
                return
            self._wait(TICK_SECONDS)

    def _wait(self, timeout: float) -> None:
        try:
            item = self.updates.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if item is None:
                self.gone = True
            else:
                self.pod = item
            try:
                item = self.updates.get_nowait()
            except queue.Empty:
                return

    def _terminal(self) -> bool:
        return self._phase() in ("Succeeded", "Failed")

    # -- starting ----------------------------------------------------------------------

    def _recover(self) -> None:
        """A Pod this node ran before the agent restarted: its processes are gone (killed
        here if they outlived the agent). Containers that restart come back with their
        restart count; a Pod that never restarts fails as disrupted, so its Job retries it
        without counting it against the backoff limit."""
        for pid_file in self.place.root.glob("*.pid"):
            if kill_orphan(pid_file):
                log.info("killed process left by a previous agent: %s", pid_file)
            pid_file.unlink(missing_ok=True)
        at = podstatus.now()
        lost = False
        for status in (self.pod.get("status") or {}).get("containerStatuses") or []:
            record = self.records.get(status["name"])
            if record is None:
                continue
            state = status.get("state") or {}
            if "running" in state:
                record.terminated = podstatus.lost_container(
                    podstatus.parse_timestamp(state["running"].get("startedAt")), at)
                lost = True
            else:
                record.terminated = podstatus.terminated_from_wire(
                    state.get("terminated") or (status.get("lastState") or {}).get("terminated"))
            record.waiting_reason = None if record.terminated else record.waiting_reason
        if lost and self.restart_policy == "Never":
            self.disrupted = podstatus.LOST_MESSAGE

    def _check_support(self) -> None:
        problems = []
        spec = self.pod["spec"]
        if spec.get("initContainers"):
            problems.append("init containers are not supported on the local node")
        if needs_own_names(self.pod) and not isinstance(self.node.own_names, OwnNames):
            problems.append("the Pod sets a hostname or subdomain, which needs its own /etc/hosts and hostname, and "
                            f"this machine cannot give a process its own mount and UTS namespaces: {self.node.own_names}")
        for container in self.containers.values():
            try:
                self.node.catalog.image(container)
            except UnsupportedContainer as exc:
                problems.append(str(exc))
        if problems:
            self._unsupported("; ".join(problems))

    def _unsupported(self, message: str) -> None:
        self.unsupported = message
        for record in self.records.values():
            record.wait(podstatus.UNSUPPORTED_IMAGE, message)
        self._announce("Warning", podstatus.UNSUPPORTED_IMAGE, message)

    def _announce(self, kind: str, reason: str, message: str) -> None:
        """An Event, once per distinct (reason, message) for this Pod."""
        if (reason, message) in self._announced:
            return
        self._announced.add((reason, message))
        self.node.api.event(self.pod, kind, reason, message)

    def _start_due(self) -> None:
        now = time.monotonic()
        for name, container in self.containers.items():
            record = self.records[name]
            if name in self.running or now < self.next_start[name]:
                continue
            if record.terminated is not None and not podstatus.should_restart(
                    self.restart_policy, record.terminated.exit_code):
                continue
            self._start(container, record)

    def _start(self, container: Mapping[str, Any], record: ContainerRecord) -> None:
        name = container["name"]
        try:
            place = PodPlace(root=self.place.root, pod_ip=self.pod_ip, node_name=self.place.node_name,
                             host_ip=self.place.host_ip,
                             shared_dirs=self.node.api.claim_dirs(self.pod, self.node.claims_dir))
            plan = plan_container(self.pod, container, catalog=self.node.catalog,
                                  sources=self.node.api.pod_sources(self.pod), place=place,
                                  base_env=self.node.base_env, node_capacity=self.node.capacity)
        except MissingReference as exc:
            record.wait(podstatus.CONFIG_ERROR, str(exc))
            self._announce("Warning", "Failed", f"Error: {exc}")
            self.next_start[name] = time.monotonic() + CONFIG_RETRY_SECONDS
            return
        except UnsupportedContainer as exc:
            self._unsupported(str(exc))
            return
        materialise(plan)
        run = record.next_run()
        log_file = open_run_log(self.place.root, name, run)
        try:
            process = subprocess.Popen(self._with_own_names(plan.argv), env=plan.env, cwd=plan.workdir,
                                       stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        except OSError as exc:
            record.finish(Terminated(exit_code=128, started_at=podstatus.now(), finished_at=podstatus.now(),
                                     message=f"failed to start {plan.argv[0]}: {exc}"))
            self._announce("Warning", "Failed", f"Error: failed to start container {name}: {exc}")
            self.next_start[name] = time.monotonic() + podstatus.restart_delay(record.restart_count)
            return
        finally:
            log_file.close()
        write_pid_file(self.place.root / f"{name}.pid", process.pid)
        record.start(podstatus.now())
        started = time.monotonic()
        running = Running(process=process, plan=plan, started=started, run=run)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if container.get(kind):
                running.probes[kind] = ProbeState.starting(container[kind], started)
        if "startupProbe" not in running.probes:
            record.started = True
        self.running[name] = running
        self.node.api.event(self.pod, "Normal", "Started", f"Started container {name} (pid {process.pid})")

    def _with_own_names(self, argv: list[str]) -> list[str]:
        """The container's command in its own /etc/hosts and hostname where this machine allows
        it; as it is elsewhere, for the Pods that do not rely on them (see `_check_support`)."""
        own = self.node.own_names
        if isinstance(own, OwnNames):
            return own.argv(self.hosts_file, pod_hostname(self.pod), argv)
        return argv

    # -- running -----------------------------------------------------------------------

    def _reap(self) -> None:
        for name, running in list(self.running.items()):
            if running.process.poll() is not None:
                self._finished(name, running)

    def _finished(self, name: str, running: Running) -> Terminated:
        del self.running[name]
        (self.place.root / f"{name}.pid").unlink(missing_ok=True)
        record = self.records[name]
        exit_code, sig = podstatus.exit_code_of(running.process.returncode)
        message = podstatus.termination_message(
            running.plan.termination_message_policy, _read(running.plan.termination_log),
            _read(running.plan.log), exit_code,
        )
        result = Terminated(exit_code=exit_code, started_at=record.running_since, finished_at=podstatus.now(),
                            message=message, signal=sig)
        record.finish(result)
        stopping = self.shutdown_grace is not None or self.pod["metadata"].get("deletionTimestamp")
        if podstatus.should_restart(self.restart_policy, exit_code) and not stopping:
            delay = podstatus.restart_delay(record.restart_count)
            record.wait(podstatus.CRASH_LOOP, f"back-off {delay:.0f}s restarting failed container={name}")
            self.next_start[name] = time.monotonic() + delay
        return result

    def _probe(self) -> None:
        now = time.monotonic()
        for name, running in list(self.running.items()):
            record = self.records[name]
            container = self.containers[name]
            for kind, state in running.probes.items():
                if (kind == "startupProbe") == record.started or not state.due(now):
                    continue
                try:
                    ok, message = http_probe(http_target(state.spec, container, self.pod_ip), state.timeout)
                except ProbeSpecError as exc:
                    ok, message = True, ""
                    self._announce("Warning", "ProbeUnsupported", f"{kind} of {name} ignored: {exc}")
                outcome = state.record(ok, time.monotonic())
                if not ok and outcome == "failure":
                    self.node.api.event(self.pod, "Warning", "Unhealthy", f"{kind[:-5].capitalize()} probe failed: "
                                        f"{message}")
                if kind == "startupProbe" and outcome == "success":
                    record.started = True
                elif kind == "readinessProbe" and outcome:
                    record.ready = outcome == "success"
                elif kind in ("startupProbe", "livenessProbe") and outcome == "failure":
                    self.node.api.event(self.pod, "Normal", "Killing",
                                        f"Container {name} failed {kind[:-5]} probe, will be restarted")
                    self._stop(name, self._grace())
                    break
            if name in self.running and record.started and "readinessProbe" not in running.probes:
                record.ready = True

    # -- stopping ----------------------------------------------------------------------

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        return float(grace)

    def _stop(self, name: str, grace: float) -> None:
        running = self.running.get(name)
        if running is not None:
            _terminate_groups([running.process], grace)
            self._finished(name, running)

    def _kill_all(self, grace: float) -> None:
        processes = [r.process for r in self.running.values()]
        _terminate_groups(processes, grace)
        for name, running in list(self.running.items()):
            self._finished(name, running)

    def _delete(self) -> None:
        """SIGTERM, SIGKILL after the grace period, a terminal status, then the Pod's removal."""
        if not self.running and (self.pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            self.node.api.delete_now(self.pod)
            return
        if self.running:
            self.node.api.event(self.pod, "Normal", "Killing",
                                f"Stopping container {', '.join(self.running)}")
        self._kill_all(self._grace())
        for record in self.records.values():
            record.waiting_reason = None
        self._push(terminal_by_node=True)
        self.node.api.delete_now(self.pod)

    def _stop_for_shutdown(self) -> None:
        """Node shutdown: containers that restart stay this node's Pods and start again with
        the agent; a Pod that never restarts (a Job's) is failed as disrupted, so the Job
        controller replaces it without counting a failure."""
        self._kill_all(self.shutdown_grace or 0)
        if self.restart_policy == "Never" and not self._terminal() and self.unsupported is None:
            self.disrupted = podstatus.SHUTDOWN_MESSAGE
        self._push()

    # -- status ------------------------------------------------------------------------

    def _phase(self, terminal_by_node: bool = False) -> str:
        if self.disrupted:
            return podstatus.pod_phase(self.restart_policy, list(self.records.values()), True) \
                if all(r.terminated for r in self.records.values()) else "Failed"
        return podstatus.pod_phase(self.restart_policy, list(self.records.values()), terminal_by_node)

    def _push(self, terminal_by_node: bool = False) -> bool:
        """Reports the status if it changed; returns whether the API server has it."""
        at = podstatus.now()
        records = list(self.records.values())
        phase = self._phase(terminal_by_node)
        ready = phase == "Running" and all(r.ready for r in records)
        unready = [r.name for r in records if not r.ready]
        if self.unsupported:
            reason, message = podstatus.UNSUPPORTED_IMAGE, self.unsupported
        elif phase in ("Succeeded", "Failed"):
            reason, message = "PodCompleted", ""
        elif ready:
            reason, message = "", ""
        else:
            reason, message = "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]"
        self.conditions.set("PodReadyToStartContainers", self.unsupported is None, at)
        self.conditions.set("Initialized", True, at)
        self.conditions.set("Ready", ready, at, reason, message)
        self.conditions.set("ContainersReady", ready, at, reason, message)
        self.conditions.set("PodScheduled", True, at)
        if self.disrupted:
            self.conditions.set("DisruptionTarget", True, at, "TerminationByKubelet", self.disrupted)
        status = podstatus.pod_status(
            phase=phase, pod_ip=self.pod_ip, host_ip=self.node.host_ip, start_time=self.start_time,
            records=records, conditions=self.conditions,
            reason="Terminated" if self.disrupted else None, message=self.disrupted,
        )
        if status == self._last_sent:
            return True
        try:
            self.node.api.patch_status(self.pod, status)
        except ApiException as exc:
            if exc.status == 404:
                self.gone = True
            else:
                log.warning("status of %s not reported (will retry): %s", self.name, exc.reason)
            return False
        except HTTPError as exc:  # the API server is unreachable: the Pod runs on, as under a kubelet
            log.warning("status of %s not reported (will retry): %s", self.name, exc)
            return False
        self._last_sent = status
        return True


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _terminate_groups(processes: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM to each process group, SIGKILL to those still running after `grace`."""
    for process in processes:
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM if grace > 0 else signal.SIGKILL)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def materialise(plan: ProcessPlan) -> None:
    """Writes the Pod's volumes and links them into its rootfs before a container starts."""
    for directory in plan.directories:
        directory.mkdir(parents=True, exist_ok=True)
    for file in plan.files:
        file.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.path.with_name(f".{file.path.name}.tmp")
        tmp.write_bytes(file.content)
        tmp.chmod(file.mode)
        os.replace(tmp, file.path)
    for link, target in plan.links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.is_file():
            link.unlink()
        link.symlink_to(target)
    plan.termination_log.unlink(missing_ok=True)
