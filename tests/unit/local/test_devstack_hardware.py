"""The hardware catalog of `make dev`: the machine's CPUs at no cost, the default profile, so
GET /api/v1/fine-tuning/hardware and cost estimates work out of the box; a caller's own
profiles win."""

from __future__ import annotations

import json

from tuneforge.config import Settings, find_hardware_profile
from tuneforge.local.devstack import LOCAL_CPU_PROFILE, hardware_env


def test_the_local_cpu_profile_is_offered_at_no_cost_and_is_the_default(monkeypatch) -> None:
    for key, value in hardware_env({}).items():
        monkeypatch.setenv(key, value)
    config = Settings()
    assert config.default_hardware_profile == LOCAL_CPU_PROFILE
    profile = find_hardware_profile(config, LOCAL_CPU_PROFILE)
    assert profile is not None and (profile.gpu_count, profile.cost_per_hour) == (0, 0)


def test_a_callers_profiles_and_default_win() -> None:
    own = {"TUNEFORGE_HARDWARE_PROFILES": json.dumps([{"name": "gpu", "gpuCount": 1}])}
    assert hardware_env(own) == {}
    assert hardware_env({"TUNEFORGE_DEFAULT_HARDWARE_PROFILE": "other"})["TUNEFORGE_DEFAULT_HARDWARE_PROFILE"] == "other"
