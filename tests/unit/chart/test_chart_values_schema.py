"""values.schema.json and the Argo CD ConfigMap are what hack/chartgen.py generates, values.yaml
agrees with the values models, and helm rejects wrong values with messages naming the value."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.helm import CHART, REPO, Helm


def _load_chartgen():
    spec = importlib.util.spec_from_file_location("chartgen", REPO / "hack" / "chartgen.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["chartgen"] = module
    spec.loader.exec_module(module)
    return module


chartgen = _load_chartgen()


def test_generated_files_match_the_committed_files():
    for path, text in chartgen.outputs().items():
        assert path.read_text() == text, f"{path.relative_to(REPO)} is stale: run `make crds`"
    assert chartgen.main(["--check"]) == 0


def test_drift_is_detected_when_a_values_model_changes(monkeypatch):
    before = chartgen.render_values_schema()
    field = chartgen.Gateway.model_fields["replicas"]
    monkeypatch.setattr(field, "description", "changed without regenerating")
    chartgen.Gateway.model_rebuild(force=True)
    chartgen.ChartValues.model_rebuild(force=True)
    try:
        assert chartgen.render_values_schema() != before
    finally:
        monkeypatch.undo()
        chartgen.Gateway.model_rebuild(force=True)
        chartgen.ChartValues.model_rebuild(force=True)


def test_drift_is_detected_when_a_health_script_changes(monkeypatch, tmp_path):
    for kind in (*chartgen.KINDS, "common"):
        (tmp_path / f"{kind}.lua").write_text((chartgen.HEALTH_DIR / f"{kind}.lua").read_text())
    (tmp_path / "BatchJob.lua").write_text("return {status = 'Healthy'}\n")
    monkeypatch.setattr(chartgen, "HEALTH_DIR", tmp_path)
    assert chartgen.render_argocd_cm() != chartgen.ARGOCD_CM.read_text()


def test_values_yaml_holds_exactly_the_model_defaults():
    on_disk = yaml.safe_load((CHART / "values.yaml").read_text())
    assert on_disk == chartgen.ChartValues().model_dump(by_alias=True, mode="json")


def test_every_ci_values_file_is_valid_for_the_models():
    for path in sorted((CHART / "ci").glob("*.yaml")):
        chartgen.ChartValues.model_validate(yaml.safe_load(path.read_text()) or {})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param('gateway={"replicas":"two"}', "at '/gateway/replicas': got string, want integer", id="wrong-type"),
        pytest.param('operator={"replicas":-1}', "at '/operator/replicas': minimum: got -1, want 0",
                     id="negative-replicas"),
        pytest.param('storage={"type":"gcs"}', "at '/storage/type': value must be one of 'pvc', 's3'",
                     id="unknown-storage-type"),
        pytest.param('gateway={"service":{"type":"Ingress"}}', "at '/gateway/service/type': value must be one of",
                     id="bad-enum"),
        pytest.param('hardwareProfiles=[{"name":"a100","gpuCount":"one"}]',
                     "at '/hardwareProfiles/0/gpuCount': got string, want integer", id="malformed-hardware-profile"),
        pytest.param('hardwareProfiles=[{"displayName":"no name"}]',
                     "at '/hardwareProfiles/0': missing property 'name'", id="hardware-profile-without-name"),
        pytest.param('hardwareProfiles=[{"name":"a100","gpus":1}]',
                     "at '/hardwareProfiles/0': additional properties 'gpus' not allowed", id="hardware-profile-typo"),
        pytest.param('baseModels=[{"name":"m","spec":{"source":{"uri":"http://x"}}}]',
                     "at '/baseModels/0/spec/source/uri': 'http://x' does not match pattern",
                     id="catalog-entry-bad-source"),
        pytest.param('storage={"pvc":{"size":"lots"}}', "at '/storage/pvc/size': 'lots' does not match pattern",
                     id="bad-quantity"),
        pytest.param('replicas=3', "at '': additional properties 'replicas' not allowed", id="unknown-key"),
    ],
)
def test_the_schema_rejects_wrong_values_with_a_readable_message(helm: Helm, values: str, expected: str):
    result = helm.template_text(sets=(values,), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert expected in result.stderr, result.stderr
    lint = helm.run("lint", str(CHART), "--set-json", values, check=False)
    assert lint.returncode != 0 and expected in lint.stdout + lint.stderr


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(('hardwareProfiles=[{"name":"a100-1","gpuCount":1}]', 'defaultHardwareProfile="h100"'),
                     'defaultHardwareProfile "h100" is not one of hardwareProfiles (a100-1)', id="unknown-default-profile"),
        pytest.param(('baseModels=[{"name":"m","spec":{"source":{"uri":"s3://b/m"},"defaultHardware":"gpu"}}]',),
                     'baseModels "m": spec.defaultHardware "gpu" is not one of hardwareProfiles (cpu)',
                     id="catalog-entry-unknown-profile"),
        pytest.param(('hardwareProfiles=[{"name":"a"},{"name":"a"}]',), 'hardwareProfiles: the name "a" is used twice',
                     id="duplicate-profile"),
        pytest.param(('operator={"peering":{"enabled":false}}',),
                     "operator.replicas is 2 but operator.peering.enabled is false", id="replicas-without-peering"),
        pytest.param(('storage={"type":"s3"}',), "storage.s3.bucket is required when storage.type is s3",
                     id="s3-without-bucket"),
    ],
)
def test_cross_value_rules_fail_with_a_readable_message(helm: Helm, values: tuple[str, ...], expected: str):
    result = helm.template_text(sets=values, check=False)
    assert result.returncode != 0 and expected in result.stderr, result.stderr


def test_unset_optional_values_still_render(helm: Helm, tmp_path: Path):
    """Nulls for optional hardware-profile fields (as a values file may spell them) are valid."""
    values = tmp_path / "values.yaml"
    values.write_text("hardwareProfiles:\n  - name: cpu\n    gpuType: null\n    costPerHour: null\n")
    rendered = helm.template(values)
    assert rendered.one("ConfigMap", "tuneforge-settings")["data"]["TUNEFORGE_HARDWARE_PROFILES"]


def test_the_example_argocd_application_installs_this_chart_with_valid_values():
    application = yaml.safe_load((REPO / "deploy" / "argocd" / "application.yaml").read_text())
    source = application["spec"]["source"]
    assert (REPO / source["path"] / "Chart.yaml").exists()
    chartgen.ChartValues.model_validate(source["helm"]["valuesObject"])
    assert "ServerSideApply=true" in application["spec"]["syncPolicy"]["syncOptions"]
