"""The local node agent: one Node that runs the Pods of tuneforge's images as processes.

It plays both parts a cluster splits between kube-scheduler and the kubelet, because the
local platform has neither: it binds Pending Pods that fit to its Node (binding
subresource), and runs the Pods bound to it (one `PodWorker` thread each), reporting
their status like a kubelet. The Job, ReplicaSet and Deployment controllers of the real
kube-controller-manager then do the rest: Job completion, `podFailurePolicy`, backoff,
rollouts. The Node posts a Ready condition and renews its Lease in `kube-node-lease`,
so nothing reading node health sees it as dead.

Each Pod gets its own loopback address (127.0.<n>.1, 127.0.<n>.2, ..., in the /24 this
agent claimed) as its podIP; Linux routes all of 127.0.0.0/8 to the loopback interface,
so servers of different Pods can all listen on port 8000 and the gateway reaches them by
podIP, as on a cluster. Having every Pod's IP, the agent also keeps each Pod's managed
/etc/hosts, where Pods of a subdomain find each other as through cluster DNS
(`tuneforge.local.hosts`).
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import platform
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from tuneforge.config import Settings
from tuneforge.local.containerlogs import LogUnavailable, run_log, select_run
from tuneforge.local.hosts import hosts_file, probe_own_names, write_in_place
from tuneforge.local.kubelet import ContainerLog, KubeletServer, kubelet_app
from tuneforge.local.nodeapi import NodeApi, node_addresses
from tuneforge.local.pki import CertificateAuthority, KeyPair, KubeletTls
from tuneforge.local.pods import Image, ImageCatalog
from tuneforge.local.podworker import NodeContext, PodWorker, pod_dir_name
from tuneforge.local.scheduling import unschedulable_reason, wants_scheduling

log = logging.getLogger("tuneforge.local.node")

NODE_NAME = "tuneforge-local"
HOST_IP = "127.0.0.1"
"""The node's address: its kubelet endpoint listens there, and its Pods report it as hostIP."""
NODE_LABEL = "tuneforge.io/local-node"
POD_SUBNETS = range(1, 255)
"""Each node agent on a machine claims one 127.0.<n>.0/24 for its Pods, so two local
platforms (a `make dev` and an e2e run) never hand out the same address."""
LEASE_RENEW_SECONDS = 10.0
STATUS_REPORT_SECONDS = 60.0
SHUTDOWN_GRACE_SECONDS = 10.0
"""How long Pods get to stop when the agent stops (the kubelet's shutdownGracePeriod)."""
PASSED_THROUGH_ENV = ("HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "TZ")


def image_catalog(settings: Settings, scripts_dir: Path | None = None) -> ImageCatalog:
    """tuneforge's images as the Dockerfiles define them, with their entrypoints resolved
    to the console scripts of this Python environment."""
    run_file_args = ("--run", "/etc/tuneforge/run.json")
    dockerfiles = [  # (image, its entrypoints, ENTRYPOINT, CMD)
        (settings.trainer_image, {"tuneforge-train"}, ("tuneforge-train",), run_file_args),
        (settings.inference_image, {"tuneforge-serve"}, ("tuneforge-serve",), run_file_args),
        (settings.batch_image, {"tuneforge", "tuneforge-batch"}, ("tuneforge",), ("--help",)),
    ]
    images: dict[str, Image] = {}
    for name, scripts, command, args in dockerfiles:
        # Settings may name one image for several roles (as the tests do): it then has
        # every role's entrypoints and the first role's defaults.
        known = images.get(name)
        images[name] = (Image(name, known.entrypoints | scripts, known.default_command, known.default_args)
                        if known else Image(name, frozenset(scripts), command, args))
    return ImageCatalog(images=images, scripts_dir=scripts_dir or Path(sys.executable).parent)


def image_environment(settings: Settings, scripts_dir: Path, inherited: Mapping[str, str]) -> dict[str, str]:
    """What the images' Dockerfiles put in every container's environment, made local:
    their Python first on PATH, unbuffered output, no model-hub access, and the shared
    weight cache (so a model is dequantized once per machine, not once per Pod)."""
    env = {key: inherited[key] for key in PASSED_THROUGH_ENV if key in inherited}
    env.update({
        "PATH": f"{scripts_dir}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HF_HUB_OFFLINE": "1",
        "TUNEFORGE_CACHE_DIR": str(settings.cache_dir),
    })
    return env


def node_capacity() -> dict[str, str]:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"cpu": str(os.cpu_count() or 1), "memory": f"{pages // 1024}Ki", "pods": "110",
            "ephemeral-storage": "100Gi"}


def node_labels(name: str) -> dict[str, str]:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
            NODE_LABEL: "true"}


class PodIps:
    """Loopback pod IPs from this node's subnet, each given to one live Pod at a time."""

    def __init__(self, subnet: ipaddress.IPv4Network) -> None:
        self.subnet = subnet
        self.used: set[str] = set()

    def take(self, preferred: str | None) -> str:
        if preferred and preferred not in self.used and ipaddress.ip_address(preferred) in self.subnet:
            self.used.add(preferred)
            return preferred
        for candidate in self.subnet.hosts():
            if str(candidate) not in self.used:
                self.used.add(str(candidate))
                return str(candidate)
        raise RuntimeError(f"no free pod IP left in {self.subnet}")

    def release(self, ip: str) -> None:
        self.used.discard(ip)


def write_hosts_files(pods: list[tuple[Mapping[str, Any], str, Path]]) -> None:
    """Writes each (pod, pod IP, hosts file) its managed /etc/hosts, naming the others where
    cluster DNS would; a file that cannot be written is logged, and its Pod keeps the last one."""
    node_pods = [(pod, ip) for pod, ip, _ in pods]
    for pod, ip, path in pods:
        try:
            write_in_place(path, hosts_file(pod, ip, node_pods))
        except OSError as exc:
            log.warning("hosts file %s not written: %s", path, exc)


def claim_subnet(lock_dir: Path, remembered: Path) -> tuple[ipaddress.IPv4Network, IO[bytes]]:
    """Locks a free 127.0.<n>.0/24 for this agent's lifetime (the returned file holds the
    lock; the OS releases it when the process dies), preferring the one this state
    directory used before, so Pods keep their IPs across restarts."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    try:
        first = [int(remembered.read_text())]
    except (OSError, ValueError):
        first = []
    for n in [*first, *POD_SUBNETS]:
        handle = open(lock_dir / f"127.0.{n}.0.lock", "wb")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        remembered.parent.mkdir(parents=True, exist_ok=True)
        remembered.write_text(f"{n}\n")
        return ipaddress.ip_network(f"127.0.{n}.0/24"), handle
    raise RuntimeError(f"every loopback pod subnet is taken by another node agent (locks in {lock_dir})")


class NodeAgent:
    """The node. With `cluster_ca` (the CA the API server trusts kubelets through) it also
    serves the kubelet endpoint, with a serving certificate that CA issues it at start,
    so `kubectl logs` reaches its Pods; without, the API server has nowhere to proxy to."""

    def __init__(self, api_client: client.ApiClient, *, state_dir: Path, settings: Settings,
                 node_name: str = NODE_NAME, scripts_dir: Path | None = None,
                 shutdown_grace: float = SHUTDOWN_GRACE_SECONDS,
                 cluster_ca: CertificateAuthority | None = None) -> None:
        scripts = scripts_dir or Path(sys.executable).parent
        self.api = NodeApi(api_client, node_name, HOST_IP)
        self.api_client = api_client
        self.node_name = node_name
        self.labels = node_labels(node_name)
        self.capacity = node_capacity()
        self.context = NodeContext(
            api=self.api, catalog=image_catalog(settings, scripts),
            base_env=image_environment(settings, scripts, os.environ), capacity=self.capacity,
            pods_dir=state_dir / "pods", claims_dir=state_dir / "claims", own_names=probe_own_names(),
            host_ip=HOST_IP,
        )
        self.cluster_ca = cluster_ca
        self.kubelet: KubeletServer | None = None
        self.shutdown_grace = shutdown_grace
        self.workers: dict[str, PodWorker] = {}
        self.state_dir = state_dir
        self.subnet_lock_dir = settings.cache_dir / "local-node-subnets"
        self.ips: PodIps | None = None
        self._subnet_lock: IO[bytes] | None = None
        self.unschedulable: set[str] = set()
        self.finished: set[str] = set()
        """Pods whose end this node has reported (so a stale watch event cannot revive them)."""
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "NodeAgent":
        self.context.pods_dir.mkdir(parents=True, exist_ok=True)
        subnet, self._subnet_lock = claim_subnet(self.subnet_lock_dir, self.state_dir / "pod-subnet")
        self.ips = PodIps(subnet)
        if self.cluster_ca is not None:
            self.kubelet = KubeletServer(kubelet_app(self), self._kubelet_tls(self.cluster_ca), HOST_IP).start()
        self.api.register_node(self.labels, self.capacity, self.kubelet_port)
        self.api.renew_lease()
        for target, name in ((self._heartbeat, "node-heartbeat"), (self._watch, "node-pod-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        log.info("node %s is ready (%s CPUs, %s memory)", self.node_name, self.capacity["cpu"], self.capacity["memory"])
        return self

    def stop(self) -> None:
        """Stops every Pod's processes (SIGTERM, then SIGKILL after the shutdown grace)."""
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.shut_down(self.shutdown_grace)
        for worker in workers:
            worker.join(self.shutdown_grace + 15)
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        if self._subnet_lock is not None:
            self._subnet_lock.close()
            self._subnet_lock = None

    def __enter__(self) -> "NodeAgent":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def kubelet_port(self) -> int:
        """The port the Node advertises for its kubelet endpoint; 0 when it serves none."""
        return self.kubelet.port if self.kubelet is not None else 0

    def _kubelet_tls(self, ca: CertificateAuthority) -> KubeletTls:
        """A serving certificate for this node's addresses, issued at each start as a
        kubelet's rotates, with the subject a kubelet's serving certificate has."""
        addresses = node_addresses(HOST_IP)
        directory = self.state_dir / "pki"
        serving = ca.issue(
            KeyPair(directory / "kubelet.crt", directory / "kubelet.key"), f"system:node:{self.node_name}",
            usage="server", organizations=("system:nodes",),
            dns_names=tuple(a["address"] for a in addresses if a["type"] == "Hostname"),
            ip_addresses=tuple(a["address"] for a in addresses if a["type"] == "InternalIP"),
        )
        return KubeletTls(serving=serving, client_ca_file=ca.cert_file)

    def container_log(self, namespace: str, pod: str, container: str, previous: bool) -> ContainerLog:
        """The kubelet endpoint's view of a container log (called from its threads): the
        Pod as the API server has it, which must be bound to this node; the run its status
        names; and, while that run's process lives, a way to follow it."""
        body = self.api.read_pod(namespace, pod)
        if body is None or (body.get("spec") or {}).get("nodeName") != self.node_name:
            raise LogUnavailable(404, f'pod "{pod}" does not exist')
        run = select_run(body, container, previous)
        with self.lock:
            worker = self.workers.get(body["metadata"]["uid"])
        process = worker.process_of(container, run) if worker is not None else None
        return ContainerLog(path=run_log(self.context.pods_dir / pod_dir_name(body), container, run),
                            running=lambda: process is not None and process.returncode is None)

    # -- threads -----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        since_report = 0.0
        while not self.stopping.wait(LEASE_RENEW_SECONDS):
            try:
                self.api.renew_lease()
                since_report += LEASE_RENEW_SECONDS
                if since_report >= STATUS_REPORT_SECONDS:
                    self.api.report_node(self.capacity, self.kubelet_port)
                    since_report = 0.0
            except (ApiException, OSError, HTTPError) as exc:  # HTTPError: the API server is unreachable
                log.warning("node heartbeat failed (will retry): %s", exc)

    def _watch(self) -> None:
        """List, then watch from the list's version; a broken or expired watch lists again
        (every handler is idempotent, so seeing a Pod twice is harmless)."""
        while not self.stopping.is_set():
            try:
                pods, version = self.api.list_pods()
                live = {pod["metadata"]["uid"] for pod in pods}
                with self.lock:
                    vanished = [w for uid, w in self.workers.items() if uid not in live]
                for worker in vanished:
                    worker.update(None)
                for pod in pods:
                    self._handle(pod)
                self._stream(version)
            except Exception:
                log.exception("pod watch failed; listing again")
                self.stopping.wait(1.0)

    def _stream(self, version: str) -> None:
        watcher = watch.Watch()
        for event in watcher.stream(self.api.core.list_pod_for_all_namespaces, resource_version=version,
                                    timeout_seconds=60, allow_watch_bookmarks=True):
            if self.stopping.is_set():
                watcher.stop()
                return
            kind, pod = event["type"], event["raw_object"]
            if kind == "ERROR":
                return
            if kind == "BOOKMARK":
                version = pod["metadata"]["resourceVersion"]
                continue
            version = pod["metadata"]["resourceVersion"]
            if kind == "DELETED":
                with self.lock:
                    worker = self.workers.get(pod["metadata"]["uid"])
                if worker is not None:
                    worker.update(None)
            else:
                self._handle(pod)

    # -- pods --------------------------------------------------------------------------

    def _handle(self, pod: dict[str, Any]) -> None:
        if self.stopping.is_set():
            return
        spec, meta, status = pod.get("spec") or {}, pod["metadata"], pod.get("status") or {}
        if spec.get("nodeName") == self.node_name:
            if meta["uid"] in self.finished:
                if meta.get("deletionTimestamp"):
                    self._quietly(self.api.delete_now, pod)
                return
            with self.lock:
                worker = self.workers.get(meta["uid"])
                if worker is not None:
                    worker.update(pod)
                    return
                if status.get("phase") in ("Succeeded", "Failed") and not meta.get("deletionTimestamp"):
                    return
                worker = PodWorker(self.context, pod, self.ips.take(status.get("podIP")), self._worker_done)
                self.workers[meta["uid"]] = worker
                self._write_hosts()
            worker.start()
        elif wants_scheduling(pod):
            self._schedule(pod)

    def _worker_done(self, uid: str) -> None:
        with self.lock:
            worker = self.workers.pop(uid, None)
            if worker is not None:
                self.ips.release(worker.pod_ip)
                if worker.finished:
                    self.finished.add(uid)
                self._write_hosts()

    def _write_hosts(self) -> None:
        """Every running Pod's managed /etc/hosts from the Pods this node runs now (called with
        the lock held whenever one comes or goes), so a Pod finds the Pods of its subdomain
        however they were started after it, and no longer finds those that are gone."""
        write_hosts_files([(worker.pod, worker.pod_ip, worker.hosts_file) for worker in self.workers.values()])

    def _schedule(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        reason = unschedulable_reason(pod, self.labels, self.capacity)
        if reason is not None:
            if meta["uid"] not in self.unschedulable:
                self.unschedulable.add(meta["uid"])
                self.api.event(pod, "Warning", "FailedScheduling", reason)
                condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": reason, "lastProbeTime": None}
                self._quietly(self.api.patch_status, pod, {"conditions": [condition]})
            return
        try:
            self.api.bind(pod)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or bound by someone else meanwhile
                log.warning("binding %s/%s failed: %s", meta["namespace"], meta["name"], exc.reason)
            return
        self.api.event(pod, "Normal", "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} "
                       f"to {self.node_name}")

    @staticmethod
    def _quietly(call, *args: Any) -> None:
        try:
            call(*args)
        except ApiException as exc:
            log.warning("%s failed: %s", getattr(call, "__name__", call), exc.reason)
