"""A Pod's names on the local node, as a kubelet and cluster DNS give them.

On a cluster a Pod's hostname is `spec.hostname`, else its name (the Job controller sets
`<job>-<index>` for the Pods of an Indexed Job). With `spec.subdomain` the Pod is
`<hostname>.<subdomain>.<namespace>.svc.cluster.local`: the kubelet writes that name
into the Pod's managed /etc/hosts, and cluster DNS answers it, and the shorter forms the
Pod's search domains complete, for every Pod of the headless Service named like the
subdomain. That is how the workers of a multi-node training Job find the first one.

The local node has no cluster DNS, so it puts those names in the managed hosts file too:
each Pod's file (`<pod dir>/etc-hosts`) names the Pod itself and every Pod of its
namespace and subdomain on this node, and is rewritten as they come and go. Each
container process runs in its own mount and UTS namespaces, with that file bind-mounted
over /etc/hosts and the hostname set (`OwnNames`), so `gethostname()`, `getaddrinfo()`
and `hostname -f` answer as in the Pod on a cluster. A bind mount shows one inode, so
the file is rewritten in place, never replaced.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLUSTER_DOMAIN = "cluster.local"
HOSTS_FILE = "etc-hosts"
"""The managed hosts file in the Pod's directory, named like the kubelet's."""
MAX_HOSTNAME = 63

LOCALHOST_ENTRIES = (
    ("127.0.0.1", "localhost"),
    ("::1", "localhost ip6-localhost ip6-loopback"),
    ("fe00::0", "ip6-localnet"),
    ("fe00::0", "ip6-mcastprefix"),
    ("fe00::1", "ip6-allnodes"),
    ("fe00::2", "ip6-allrouters"),
)
"""What every kubelet-managed /etc/hosts starts with."""

UNSHARE_FLAGS = (
    ("--mount", "--propagation", "private", "--uts"),
    ("--user", "--map-root-user", "--mount", "--propagation", "private", "--uts"),
)
"""Own mount and UTS namespaces as root, then without root through a user namespace."""


def pod_hostname(pod: Mapping[str, Any]) -> str:
    """`spec.hostname`, else the Pod's name cut to a DNS label, as the kubelet sets it."""
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    return spec.get("hostname") or meta.get("name", "")[:MAX_HOSTNAME].rstrip("-.")


def needs_own_names(pod: Mapping[str, Any]) -> bool:
    """Whether the Pod's programs can rely on names beyond its own Pod name: a hostname or
    subdomain set in the spec (every Indexed Job Pod has one)."""
    spec = pod.get("spec") or {}
    return bool(spec.get("hostname") or spec.get("subdomain"))


def subdomain_names(pod: Mapping[str, Any]) -> list[str]:
    """The Pod's names under its subdomain, longest first: the FQDN cluster DNS serves and
    the shorter forms the Pod's search domains (`<ns>.svc.cluster.local`, `svc.cluster.local`,
    `cluster.local`) complete to it. None without a subdomain."""
    subdomain = (pod.get("spec") or {}).get("subdomain")
    if not subdomain:
        return []
    namespace = (pod.get("metadata") or {}).get("namespace", "")
    base = f"{pod_hostname(pod)}.{subdomain}"
    return [f"{base}.{namespace}.svc.{CLUSTER_DOMAIN}", f"{base}.{namespace}.svc", f"{base}.{namespace}", base]


def _same_subdomain(pod: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    subdomain = (pod.get("spec") or {}).get("subdomain")
    return bool(subdomain) and (other.get("spec") or {}).get("subdomain") == subdomain and \
        other["metadata"].get("namespace") == pod["metadata"].get("namespace") and \
        other["metadata"].get("uid") != pod["metadata"].get("uid")


def hosts_file(pod: Mapping[str, Any], pod_ip: str, node_pods: Iterable[tuple[Mapping[str, Any], str]]) -> str:
    """The Pod's managed /etc/hosts: localhost, the Pod's own names (as the kubelet writes
    them), the Pods of its namespace and subdomain among `node_pods` (pod, pod IP) on this
    node (as cluster DNS answers for them), then `spec.hostAliases` (as the kubelet appends
    them)."""
    lines = ["# Kubernetes-managed hosts file (tuneforge local node).",
             *(f"{ip}\t{names}" for ip, names in LOCALHOST_ENTRIES),
             f"{pod_ip}\t{' '.join([*subdomain_names(pod), pod_hostname(pod)])}"]
    peers = sorted((pod_hostname(other), ip, subdomain_names(other)) for other, ip in node_pods
                   if _same_subdomain(pod, other))
    if peers:
        lines.append(f"# Pods of subdomain {pod['spec']['subdomain']} (cluster DNS).")
        lines.extend(f"{ip}\t{' '.join(names)}" for _, ip, names in peers)
    aliases = (pod.get("spec") or {}).get("hostAliases") or []
    if aliases:
        lines.append("# Entries added by HostAliases.")
        lines.extend(f"{alias['ip']}\t{' '.join(alias.get('hostnames') or [])}" for alias in aliases)
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, text: str) -> bool:
    """Rewrites `path` keeping its inode, because a running Pod sees the file through a bind
    mount of that inode; returns whether the content changed."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    return True


@dataclass(frozen=True)
class OwnNames:
    """How this machine starts a process with its own /etc/hosts and hostname: an unshare
    command line that works here, and the tools it runs inside before the program."""

    unshare: tuple[str, ...]
    mount: str
    hostname: str

    def argv(self, hosts: Path, hostname: str, argv: Sequence[str]) -> list[str]:
        """`argv` in its own namespaces; the shell execs it, so its pid and process group
        stay those of the process the agent started."""
        script = f'{shlex.quote(self.mount)} --bind "$1" /etc/hosts && {shlex.quote(self.hostname)} "$2" ' \
                 '&& shift 2 && exec "$@"'
        return [*self.unshare, "--", "/bin/sh", "-c", script, "tuneforge-pod", str(hosts), hostname, *argv]


def probe_own_names() -> OwnNames | str:
    """The first `UNSHARE_FLAGS` that really work on this machine (tried on a scratch hosts
    file), or why none does: containers and hardened kernels may refuse both."""
    tools = {name: shutil.which(name) for name in ("unshare", "mount", "hostname")}
    missing = sorted(name for name, path in tools.items() if path is None)
    if missing:
        return f"{', '.join(missing)} not found"
    errors = []
    with tempfile.NamedTemporaryFile("w", suffix="-hosts") as scratch:
        scratch.write(hosts_file({"metadata": {"name": "probe"}}, "127.0.0.1", []))
        scratch.flush()
        for flags in UNSHARE_FLAGS:
            own = OwnNames((tools["unshare"], *flags), tools["mount"], tools["hostname"])
            try:
                result = subprocess.run(own.argv(Path(scratch.name), "probe", ["true"]), capture_output=True,
                                        text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"unshare {' '.join(flags)}: {exc}")
                continue
            if result.returncode == 0:
                return own
            errors.append(f"unshare {' '.join(flags)}: {result.stderr.strip() or f'exit {result.returncode}'}")
    return "; ".join(errors)
