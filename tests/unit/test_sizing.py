"""tuneforge.api.sizing: the hardware checks the gateway and the FineTuningJob controller
both apply, on plain specs and settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tuneforge.api.sizing import SizingError, UnknownHardwareProfile, size_training
from tuneforge.api.v1alpha1 import BaseModelSpec, FineTuningJobSpec
from tuneforge.config import HardwareProfile, Settings

PROFILES = Settings(hardware_profiles=[
    HardwareProfile(name="a100x8", gpu_count=8, gpu_memory_gb=80, max_nodes=4, shared_memory="16Gi",
                    env={"NCCL_IB_DISABLE": "0"}),
    HardwareProfile(name="h100x8-pair", gpu_count=8, gpu_memory_gb=80, nodes=2, max_nodes=2),
    HardwareProfile(name="l4", gpu_count=1, gpu_memory_gb=24),
    HardwareProfile(name="cpu", cpu="4", memory="16Gi"),
])
BASE = BaseModelSpec(source={"uri": "file:///models/m"})


def job(**spec: object) -> FineTuningJobSpec:
    return FineTuningJobSpec.model_validate({"baseModel": "m", "trainingFile": "file-1234abcd", **spec})


def refused(spec: FineTuningJobSpec, settings: Settings = PROFILES, base: BaseModelSpec = BASE) -> SizingError:
    with pytest.raises(SizingError) as caught:
        size_training(spec, base, settings)
    return caught.value


def test_processes_default_to_the_gpus_per_pod_and_one_on_cpu() -> None:
    size = size_training(job(hardware={"profile": "a100x8"}), BASE, PROFILES)
    assert (size.nodes, size.processes_per_node, size.gpus_per_node, size.world_size) == (1, 8, 8, 8)
    assert size.profile.name == "a100x8"
    cpu = size_training(job(hardware={"profile": "cpu"}), BASE, PROFILES)
    assert (cpu.nodes, cpu.processes_per_node, cpu.gpus_per_node) == (1, 1, 0)
    nothing = size_training(job(), BASE, Settings())
    assert (nothing.hardware, nothing.profile, nothing.world_size) == (None, None, 1)


def test_nodes_come_from_the_request_else_the_profile() -> None:
    assert size_training(job(hardware={"profile": "a100x8", "nodes": 3}), BASE, PROFILES).world_size == 24
    assert size_training(job(hardware={"profile": "h100x8-pair"}), BASE, PROFILES).nodes == 2
    assert size_training(job(hardware={"profile": "h100x8-pair", "nodes": 1}), BASE, PROFILES).nodes == 1


def test_fewer_processes_than_gpus_and_several_on_cpu_are_allowed() -> None:
    assert size_training(job(hardware={"profile": "a100x8"}, distributed={"processesPerNode": 4}),
                         BASE, PROFILES).processes_per_node == 4
    assert size_training(job(hardware={"profile": "cpu"}, distributed={"processesPerNode": 3}),
                         BASE, PROFILES).processes_per_node == 3


def test_more_processes_than_gpus_is_refused() -> None:
    error = refused(job(hardware={"profile": "l4"}, distributed={"processesPerNode": 2}))
    assert (error.code, error.param) == ("invalid_distributed", "distributed.processes_per_node")
    assert error.message == "2 processes per node exceed the 1 GPUs per Pod (each process drives one GPU)"


def test_nodes_beyond_the_profiles_max_nodes_are_refused() -> None:
    error = refused(job(hardware={"profile": "a100x8", "nodes": 5}))
    assert (error.code, error.param) == ("invalid_hardware", "hardware.nodes")
    assert error.message == "training on 5 nodes exceeds maxNodes 4 of hardware profile 'a100x8'"
    error = refused(job(hardware={"profile": "l4", "nodes": 2}))
    assert "exceeds maxNodes 1 of hardware profile 'l4'" in error.message


def test_multi_node_without_a_profile_names_the_profiles_that_allow_it() -> None:
    error = refused(job(hardware={"gpuCount": 8, "nodes": 2}))
    assert (error.code, error.param) == ("invalid_hardware", "hardware.nodes")
    assert error.message == ("training on 2 nodes needs a hardware profile whose maxNodes allows it; offered: "
                             "a100x8 (maxNodes 4), h100x8-pair (maxNodes 2)")
    error = refused(job(hardware={"nodes": 2}), Settings())
    assert error.message.endswith("no profile offers more than 1 node")


def test_more_gpus_per_pod_than_any_profile_is_refused() -> None:
    error = refused(job(hardware={"profile": "a100x8", "gpuCount": 16}))
    assert (error.code, error.param) == ("invalid_hardware", "hardware.gpu_count")
    assert error.message == ("16 GPUs per Pod is more than any hardware profile offers "
                             "(the most is 8, on a100x8, h100x8-pair)")


def test_without_profiles_the_gpu_count_is_not_limited() -> None:
    assert size_training(job(hardware={"gpuCount": 16}), BASE, Settings()).processes_per_node == 16


def test_fsdp_with_qlora_is_refused_but_auto_and_ddp_are_not() -> None:
    qlora = {"lora": {"quantization": "nf4"}}
    error = refused(job(hardware={"profile": "a100x8"}, method=qlora, distributed={"strategy": "fsdp"}))
    assert (error.code, error.param) == ("unsupported_distributed_strategy", "distributed.strategy")
    assert "nf4" in error.message
    for strategy in ("auto", "ddp"):
        size_training(job(hardware={"profile": "a100x8"}, method=qlora, distributed={"strategy": strategy}),
                      BASE, PROFILES)


def test_an_unknown_profile_is_a_sizing_error_too() -> None:
    error = refused(job(hardware={"profile": "tpu"}))
    assert isinstance(error, UnknownHardwareProfile)
    assert (error.code, error.param) == ("invalid_hardware_profile", "hardware.profile")
    assert error.api_error().to_wire() == {"code": "invalid_hardware_profile", "param": "hardware.profile",
                                           "message": error.message}


def test_the_base_models_default_profile_is_checked_like_the_jobs_own() -> None:
    base = BaseModelSpec(source={"uri": "file:///models/m"}, default_hardware="l4")
    assert refused(job(distributed={"processesPerNode": 4}), base=base).param == "distributed.processes_per_node"


def test_a_profile_offers_no_more_nodes_than_its_max() -> None:
    with pytest.raises(ValidationError, match=r"nodes \(3\) must not exceed maxNodes \(2\)"):
        HardwareProfile(name="x", nodes=3, max_nodes=2)


def test_a_lora_rank_the_serving_engine_refuses_is_refused_at_create() -> None:
    base = BaseModelSpec(source={"uri": "file:///models/m"}, serving={"maxAdapterRank": 32})
    error = refused(job(method={"lora": {"rank": 64}}), base=base)
    assert (error.code, error.param) == ("invalid_hyperparameters", "method.lora.rank")
    assert "64" in error.message and "32" in error.message
    size_training(job(method={"lora": {"rank": 32}}), base, PROFILES)
