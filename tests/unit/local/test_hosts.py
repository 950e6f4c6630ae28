"""A Pod's names on the local node: the managed /etc/hosts standing in for the kubelet's
and cluster DNS, and the namespaces that show it to the Pod's processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tuneforge.config import Settings
from tuneforge.local.hosts import (
    OwnNames,
    hosts_file,
    needs_own_names,
    pod_hostname,
    probe_own_names,
    write_in_place,
)
from tuneforge.local.node import image_catalog, write_hosts_files
from tuneforge.local.podworker import NodeContext, PodWorker


def _pod(name: str, uid: str, namespace: str = "ns", **spec) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid}, "spec": spec}


def _indexed(index: int, job: str = "mn", subdomain: str = "mn-svc", namespace: str = "ns") -> dict:
    """A Pod as the Job controller makes it for an Indexed Job with a subdomain."""
    return _pod(f"{job}-{index}-x{index}", f"{job}-{namespace}-{index}", namespace, hostname=f"{job}-{index}",
                subdomain=subdomain)


def _entries(text: str) -> dict[str, str]:
    """name -> address, as a resolver reading the file finds it (the first line naming it wins)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            address, *names = line.split()
            for name in names:
                found.setdefault(name, address)
    return found


def test_indexed_job_pods_resolve_each_other_under_their_subdomain():
    pod0, pod1 = _indexed(0), _indexed(1)
    node = [(pod0, "127.0.3.1"), (pod1, "127.0.3.2"), (_indexed(0, job="other", subdomain="o"), "127.0.3.3"),
            (_indexed(0, namespace="elsewhere"), "127.0.3.4"), (_pod("plain", "p"), "127.0.3.5")]
    entries = _entries(hosts_file(pod1, "127.0.3.2", node))
    for name in ("mn-0.mn-svc", "mn-0.mn-svc.ns", "mn-0.mn-svc.ns.svc", "mn-0.mn-svc.ns.svc.cluster.local"):
        assert entries[name] == "127.0.3.1"
    for name in ("mn-1", "mn-1.mn-svc", "mn-1.mn-svc.ns.svc.cluster.local"):
        assert entries[name] == "127.0.3.2"
    assert entries["localhost"] == "127.0.0.1"
    # Cluster DNS has no record for a peer's bare hostname, nor for other subdomains or namespaces.
    assert not {"mn-0", "other-0", "other-0.o", "plain"} & set(entries)
    assert list(entries.values()).count("127.0.3.1") == 4


def test_own_line_is_the_kubelets_fqdn_first():
    text = hosts_file(_indexed(0), "127.0.3.1", [])
    assert "127.0.3.1\tmn-0.mn-svc.ns.svc.cluster.local mn-0.mn-svc.ns.svc mn-0.mn-svc.ns mn-0.mn-svc mn-0\n" in text
    assert "Pods of subdomain" not in text


def test_pod_without_hostname_is_named_by_its_name_cut_to_a_label():
    long = _pod("a" * 62 + "-b", "u")
    assert pod_hostname(long) == "a" * 62
    assert not needs_own_names(long)
    assert needs_own_names(_pod("p", "u", hostname="h")) and needs_own_names(_pod("p", "u", subdomain="s"))
    assert _entries(hosts_file(_pod("web-1", "u"), "127.0.3.9", []))["web-1"] == "127.0.3.9"


def test_host_aliases_come_last_as_the_kubelet_appends_them():
    pod = _pod("p", "u", hostAliases=[{"ip": "10.1.2.3", "hostnames": ["store", "store.local"]}])
    text = hosts_file(pod, "127.0.3.1", [])
    assert text.endswith("# Entries added by HostAliases.\n10.1.2.3\tstore store.local\n")


def test_write_in_place_keeps_the_inode_a_bind_mount_shows(tmp_path: Path):
    path = tmp_path / "pod" / "etc-hosts"
    assert write_in_place(path, "one\n")
    inode = path.stat().st_ino
    assert not write_in_place(path, "one\n")
    assert write_in_place(path, "two\n")
    assert path.stat().st_ino == inode and path.read_text() == "two\n"


def test_hosts_files_follow_pods_coming_and_going(tmp_path: Path):
    pod0, pod1 = _indexed(0), _indexed(1)
    file0, file1 = tmp_path / "p0" / "etc-hosts", tmp_path / "p1" / "etc-hosts"
    write_hosts_files([(pod1, "127.0.3.2", file1)])
    assert "mn-0.mn-svc" not in _entries(file1.read_text())
    inode = file1.stat().st_ino
    write_hosts_files([(pod1, "127.0.3.2", file1), (pod0, "127.0.3.1", file0)])
    assert _entries(file1.read_text())["mn-0.mn-svc"] == "127.0.3.1"
    assert _entries(file0.read_text())["mn-1.mn-svc"] == "127.0.3.2"
    write_hosts_files([(pod0, "127.0.3.1", file0)])
    assert "mn-1.mn-svc" not in _entries(file0.read_text())
    assert file1.stat().st_ino == inode


RESOLVER = """
import os, socket, sys, time
deadline = time.monotonic() + 20
while True:
    try:
        peer = socket.getaddrinfo("mn-0.mn-svc", 29400, type=socket.SOCK_STREAM)[0][4][0]
        break
    except socket.gaierror:
        if time.monotonic() > deadline:
            raise
        print("waiting", flush=True)
        time.sleep(0.1)
own = socket.getaddrinfo(socket.gethostname(), None)[0][4][0]
print(os.environ.get("HOSTNAME"), socket.gethostname(), socket.getfqdn(), own, peer)
"""


def test_a_running_process_sees_its_names_and_peers_that_arrive_later(tmp_path: Path):
    own = probe_own_names()
    if not isinstance(own, OwnNames):
        pytest.skip(f"this machine gives no process its own namespaces: {own}")
    pod0, pod1 = _indexed(0), _indexed(1)
    file0, file1 = tmp_path / "p0" / "etc-hosts", tmp_path / "p1" / "etc-hosts"
    write_hosts_files([(pod1, "127.0.3.2", file1)])
    process = subprocess.Popen(own.argv(file1, "mn-1", [sys.executable, "-c", RESOLVER]), stdout=subprocess.PIPE,
                               text=True, env={"HOSTNAME": "mn-1"})
    assert process.stdout.readline() == "waiting\n"
    write_hosts_files([(pod1, "127.0.3.2", file1), (pod0, "127.0.3.1", file0)])
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert out.splitlines()[-1].split() == ["mn-1", "mn-1", "mn-1.mn-svc.ns.svc.cluster.local", "127.0.3.2",
                                            "127.0.3.1"]


def test_where_no_namespaces_work_only_pods_relying_on_names_are_unsupported(tmp_path: Path):
    events = []
    api = SimpleNamespace(node_name="tuneforge-local", event=lambda pod, kind, reason, message: events.append(reason))
    node = NodeContext(api=api, catalog=image_catalog(Settings(), tmp_path), base_env={}, capacity={},
                       pods_dir=tmp_path, claims_dir=tmp_path, own_names="unshare: Operation not permitted")
    container = {"name": "worker", "image": Settings().trainer_image}
    indexed = PodWorker(node, {**_indexed(0), "spec": {**_indexed(0)["spec"], "containers": [container]}},
                        "127.0.3.1", lambda uid: None)
    indexed._check_support()
    assert "needs its own /etc/hosts" in indexed.unsupported and "Operation not permitted" in indexed.unsupported
    assert events == ["UnsupportedImage"]
    plain = PodWorker(node, _pod("web-1", "u", containers=[container]), "127.0.3.2", lambda uid: None)
    plain._check_support()
    assert plain.unsupported is None
    assert plain._with_own_names(["tuneforge-train"]) == ["tuneforge-train"]
