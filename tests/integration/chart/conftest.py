"""Fixtures for the chart tests on a real kube-apiserver: the pinned helm. The chart's
ServiceAccounts authenticate through tests.support.apiserver.service_account_kubeconfig."""

from __future__ import annotations

import pytest

from tests.support.helm import Helm, provision_helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(provision_helm())
