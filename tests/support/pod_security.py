"""The Pod Security "restricted" profile (baseline's rules included) restated as a check of
a Pod spec, as the admission plugin applies it: the operator's workload Pods
(tests/unit/controllers/test_pod_security.py) and the chart's own Pods
(tests/unit/chart/test_chart_render.py) are held to it without an API server, and
tests/integration/controllers/test_pod_admission.py shows the real plugin agreeing."""

from __future__ import annotations

VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]


def _baseline_context(where: str, context: dict) -> list[str]:
    """The baseline rules a pod or container securityContext is held to."""
    problems = []
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        problems.append(f"{where}: hostProcess")
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        problems.append(f"{where}: seLinuxOptions {selinux}")
    if (context.get("appArmorProfile") or {}).get("type", "RuntimeDefault") not in ("RuntimeDefault", "Localhost"):
        problems.append(f"{where}: appArmorProfile {context['appArmorProfile']}")
    if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{where}: seccompProfile Unconfined")
    if context.get("runAsUser") == 0:
        problems.append(f"{where}: runAsUser 0")
    return problems


def _container_rules(container: dict, pod_context: dict) -> list[str]:
    name = f"container {container['name']!r}"
    context = container.get("securityContext") or {}
    problems = _baseline_context(name, context)
    if context.get("privileged"):
        problems.append(f"{name}: privileged")
    if context.get("procMount", "Default") != "Default":
        problems.append(f"{name}: procMount {context['procMount']}")
    if any(port.get("hostPort") for port in container.get("ports", [])):
        problems.append(f"{name}: hostPort")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name}: allowPrivilegeEscalation != false")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in capabilities.get("drop", []):
        problems.append(f"{name}: capabilities.drop lacks ALL")
    if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
        problems.append(f"{name}: capabilities.add {capabilities['add']}")
    non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
    if non_root is not True:
        problems.append(f"{name}: runAsNonRoot != true")
    seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append(f"{name}: seccompProfile {seccomp}")
    return problems


def restricted_violations(pod: dict) -> list[str]:
    """What Pod Security admission at level restricted (latest) would refuse in `pod`."""
    context = pod.get("securityContext") or {}
    problems = _baseline_context("pod", context)
    for namespace in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(namespace):
            problems.append(f"pod: {namespace}")
    for sysctl in context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"pod: sysctl {sysctl['name']}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= VOLUME_TYPES:
            problems.append(f"volume {volume['name']!r}: {sorted(kinds - VOLUME_TYPES)}")
    for container in _containers(pod):
        problems += _container_rules(container, context)
    return problems
