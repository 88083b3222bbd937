"""Every example users apply parses with the API models (the e2e suite applies them too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lepton_operator.api import InferenceService, LeptonDataset, TrainingJob
from restricted_policy import violations

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
MODELS: dict[str, Any] = {"LeptonDataset": LeptonDataset, "TrainingJob": TrainingJob, "InferenceService": InferenceService}


def example_files() -> list[Path]:
    return sorted(set(EXAMPLES.glob("*.yaml")) - {EXAMPLES / "kustomization.yaml"})


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in example_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((f"{path.name}:{document['metadata']['name']}", document))
    return found


def test_the_kustomization_lists_every_example() -> None:
    listed = yaml.safe_load((EXAMPLES / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [path.name for path in example_files()]


def test_examples_cover_all_three_kinds() -> None:
    assert {doc["kind"] for _, doc in documents()} >= set(MODELS)


#: What else the examples carry: Secrets and the quickstart's sample-data server.
PLAIN = {"Secret": "v1", "Service": "v1", "Deployment": "apps/v1"}


@pytest.mark.parametrize(("where", "document"), documents(), ids=[where for where, _ in documents()])
def test_example_is_valid(where: str, document: dict[str, Any]) -> None:
    if document["kind"] in MODELS:
        MODELS[document["kind"]].model_validate(document)
    else:
        assert PLAIN[document["kind"]] == document["apiVersion"]
    if document["kind"] == "Deployment":  # admitted where Pod Security enforces restricted, like Lepton's own pods
        assert violations(document["spec"]["template"]["spec"]) == []


def test_the_quickstart_is_one_chain_of_references() -> None:
    quickstart = {doc["kind"]: doc for doc in yaml.safe_load_all((EXAMPLES / "quickstart.yaml").read_text())}
    data, service = quickstart["Deployment"], quickstart["Service"]
    assert service["spec"]["selector"].items() <= data["spec"]["template"]["metadata"]["labels"].items()
    port = service["spec"]["ports"][0]["port"]
    assert quickstart["LeptonDataset"]["spec"]["source"]["uri"] == f"http://{service['metadata']['name']}:{port}/records/"
    assert quickstart["TrainingJob"]["spec"]["dataset"]["name"] == quickstart["LeptonDataset"]["metadata"]["name"]
    source = quickstart["InferenceService"]["spec"]["model"]["source"]
    assert source["trainingJobRef"]["name"] == quickstart["TrainingJob"]["metadata"]["name"]
    # Served behind an API key from a Secret in the same file (the demo's; the comment says to change it).
    key_ref = quickstart["InferenceService"]["spec"]["auth"]["apiKeySecretRef"]
    assert key_ref["name"] == quickstart["Secret"]["metadata"]["name"] and quickstart["Secret"]["stringData"][key_ref["key"]]
