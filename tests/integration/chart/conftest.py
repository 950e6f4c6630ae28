"""Fixtures for the chart tests on a real kube-apiserver: the pinned helm, a control plane
of their own (the chart installs cluster-scoped objects and CRDs, so it never shares the
session's), and kubeconfigs that authenticate as the chart's ServiceAccounts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tuneforge.local.controlplane import ControlPlane

from tests.support.helm import Helm, provision_helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(provision_helm())


def service_account_kubeconfig(plane: ControlPlane, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig whose user is the ServiceAccount, with a token from the TokenRequest API:
    what a Pod running under that account authenticates with."""
    token = plane.kubectl("create", "token", account, "-n", namespace, "--duration", "2h").stdout.strip()
    config = copy.deepcopy(yaml.safe_load(plane.kubeconfig.read_text()))
    config["users"] = [{"name": account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    path.write_text(yaml.safe_dump(config))
    return path
