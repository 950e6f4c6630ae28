"""The CRDs in crds/ and the chart are exactly what the API types generate."""

from pathlib import Path

import yaml

from tuneforge.api import crdgen
from tuneforge.api.v1alpha1 import KINDS, FineTuningJobSpec

REPO = Path(__file__).resolve().parents[2]


def test_generated_crds_match_the_committed_files():
    rendered = crdgen.render_all()
    for directory in (REPO / "crds", REPO / "charts" / "tuneforge" / "crds"):
        on_disk = {path.name: path.read_text() for path in directory.glob("tuneforge.io_*.yaml")}
        assert on_disk == rendered, f"{directory} is stale: run `make crds`"


def test_drift_is_detected_when_a_model_changes(monkeypatch):
    before = crdgen.render_all()
    field = FineTuningJobSpec.model_fields["suffix"]
    monkeypatch.setattr(field, "description", "changed without regenerating")
    FineTuningJobSpec.model_rebuild(force=True)
    try:
        assert crdgen.render_all() != before
    finally:
        monkeypatch.undo()
        FineTuningJobSpec.model_rebuild(force=True)


def _walk(node, path="$"):
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schemas_are_structural_and_documented():
    for resource in KINDS:
        schema = crdgen.crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema["properties"]["spec"], "spec"):
            assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
            typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get(
                "x-kubernetes-preserve-unknown-fields"
            )
            assert typed, f"{resource.crd.kind} {path} has no type"
            if path.count(".") == 1 and not path.endswith(("[]", "{}")):
                assert node.get("description"), f"{resource.crd.kind} {path} is undocumented"


def test_names_columns_and_immutability():
    ftjob = crdgen.crd(KINDS[1])
    names = ftjob["spec"]["names"]
    assert names["shortNames"] == ["ftjob"] and names["categories"] == ["tuneforge"]
    version = ftjob["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:2] == ["Phase", "Base"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for field in ("baseModel", "trainingFile"):
        assert {"rule": "self == oldSelf", "message": f"{field} is immutable"} in spec[field]["x-kubernetes-validations"]
    assert spec["hyperparameters"]["properties"]["nEpochs"]["x-kubernetes-int-or-string"] is True
    assert crdgen.crd(KINDS[0])["spec"]["scope"] == "Cluster"


def test_files_are_valid_yaml_with_a_generated_header():
    for path in (REPO / "crds").glob("*.yaml"):
        text = path.read_text()
        assert text.startswith(crdgen.HEADER)
        assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"
