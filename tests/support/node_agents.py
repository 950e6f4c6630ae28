"""A node agent for the tests that run Pods on a bare control plane, without the rest of
the local platform: its `tuneforge-train` entrypoint runs the tests' own Python, so a Pod
whose command is `tuneforge-train -c <script>` runs that script."""

from __future__ import annotations

import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import config

from tuneforge.config import Settings
from tuneforge.local.controlplane import ControlPlane
from tuneforge.local.node import NodeAgent


@contextmanager
def python_node_agent(plane: ControlPlane, state_dir: Path, scripts_dir: Path) -> Iterator[NodeAgent]:
    """The agent of `plane`'s node, serving the kubelet's log endpoint with the cluster CA."""
    entrypoint = scripts_dir / "tuneforge-train"
    entrypoint.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    entrypoint.chmod(entrypoint.stat().st_mode | stat.S_IXUSR)
    api_client = config.new_client_from_config(config_file=str(plane.kubeconfig))
    try:
        with NodeAgent(api_client, state_dir=state_dir, settings=Settings(), scripts_dir=scripts_dir,
                       shutdown_grace=2.0, cluster_ca=plane.cluster_ca) as agent:
            yield agent
    finally:
        api_client.close()
