"""The generated CRDs: committed copy up to date, schemas structural, API surface complete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lepton_operator import crdgen
from lepton_operator.api.meta import RESOURCES
from lepton_operator.cli import main

REPO = Path(__file__).resolve().parents[2]
CRDS = {crd["spec"]["names"]["kind"]: crd for crd in crdgen.lepton_crds()}


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for name, child in node.get("properties", {}).items():
            yield from walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crds_are_up_to_date() -> None:
    assert crdgen.stale_files(REPO / "crds") == [], "run `lepton-operator crds` and commit crds/"


def test_check_flag_fails_on_a_stale_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--output-dir", str(tmp_path), "--check"]) == 1
    assert main(["crds", "--output-dir", str(tmp_path)]) == 0
    (tmp_path / "lepton.ai_trainingjobs.yaml").write_text("edited by hand\n")
    assert main(["crds", "--output-dir", str(tmp_path), "--check"]) == 1
    assert "lepton.ai_trainingjobs.yaml" in capsys.readouterr().out


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural(kind: str) -> None:
    for path, node in walk(schema_of(kind)):
        assert "$ref" not in node and "$defs" not in node and "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert node.get("default", 0) is not None, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
        else:
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), path


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_is_documented_for_kubectl_explain(kind: str) -> None:
    undocumented = [
        path
        for path, node in walk(schema_of(kind))
        if path.startswith((".spec", ".status")) and not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert undocumented == []


def test_nested_blocks_default_to_their_models_defaults() -> None:
    """In full: the API server checks a default against its object's CEL rules."""
    spec = schema_of("TrainingJob")["properties"]["spec"]["properties"]
    assert spec["workers"]["default"] == {"replicas": 1}
    storage = schema_of("LeptonDataset")["properties"]["spec"]["properties"]["storage"]
    assert storage["default"] == {"size": "10Gi", "accessModes": ["ReadWriteOnce"]}
    assert spec["workers"]["properties"]["replicas"]["default"] == 1
    assert spec["restartPolicy"]["properties"]["retryableExitCodes"]["default"] == [130, 137, 143]


def test_cel_rules_travel_with_their_objects() -> None:
    workers = schema_of("TrainingJob")["properties"]["spec"]["properties"]["workers"]
    rules = [rule["rule"] for rule in workers["x-kubernetes-validations"]]
    assert any("minReplicas <= self.maxReplicas" in rule for rule in rules)
    assert "x-kubernetes-validations" in schema_of("TrainingJob")  # the name-length rule
    source = schema_of("InferenceService")["properties"]["spec"]["properties"]["model"]["properties"]["source"]
    assert "exactly one" in source["x-kubernetes-validations"][0]["message"]


def test_conditions_are_a_map_list_keyed_by_type() -> None:
    conditions = schema_of("LeptonDataset")["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize("info", RESOURCES, ids=lambda info: info.kind)
def test_names_columns_and_subresources(info: Any) -> None:
    crd = CRDS[info.kind]
    names = crd["spec"]["names"]
    assert names["categories"] == ["lepton"]
    assert names["shortNames"] == list(info.short_names)
    version = crd["spec"]["versions"][0]
    assert "status" in version["subresources"]
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns[:2] == ["Phase", "Ready"] and columns[-1] == "Age"


def test_inference_service_has_the_scale_subresource() -> None:
    scale = CRDS["InferenceService"]["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_short_names_avoid_kserve() -> None:
    assert CRDS["InferenceService"]["spec"]["names"]["shortNames"] == ["lis"]


def test_kustomization_lists_every_generated_crd() -> None:
    kustomization = yaml.safe_load((REPO / "crds" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {path.name for path in (REPO / "crds").glob("*_*.yaml")}
