"""The scheduler's part of the local node agent: whether a Pod fits this node.

There is no kube-scheduler on the local platform; the agent binds Pending Pods to its
node itself. It honours what would keep a Pod off a real node, so a Pod asking for a GPU
stays Pending with a FailedScheduling Event on a laptop, as on a CPU-only cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_SCHEDULER = "default-scheduler"


def wants_scheduling(pod: Mapping[str, Any]) -> bool:
    """An unbound, live Pod for the default scheduler."""
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    return (
        not spec.get("nodeName")
        and spec.get("schedulerName", DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER
        and not meta.get("deletionTimestamp")
        and (pod.get("status") or {}).get("phase", "Pending") == "Pending"
        and not any(gate for gate in spec.get("schedulingGates") or [])
    )


def unschedulable_reason(pod: Mapping[str, Any], node_labels: Mapping[str, str],
                         allocatable: Mapping[str, str]) -> str | None:
    """Why the Pod cannot run on this node, or None when it fits."""
    spec = pod.get("spec") or {}
    mismatched = {k: v for k, v in (spec.get("nodeSelector") or {}).items() if node_labels.get(k) != v}
    if mismatched:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(mismatched.items()))
        return f"0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector ({wanted})."
    missing = set()
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for name, value in (resources.get(kind) or {}).items():
                if name not in allocatable and str(value) not in ("0", ""):
                    missing.add(name)
    if missing:
        return f"0/1 nodes are available: 1 Insufficient {', '.join(sorted(missing))}."
    return None
