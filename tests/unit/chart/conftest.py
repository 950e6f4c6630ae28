"""The chart tests render with the pinned helm from hack/provision-helm.sh."""

from __future__ import annotations

import pytest

from tests.support.helm import Helm, provision_helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(provision_helm())
