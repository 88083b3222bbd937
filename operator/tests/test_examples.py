"""Every example users apply parses with the API models (the e2e suite applies them too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lepton_operator.api import InferenceService, LeptonDataset, TrainingJob

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


@pytest.mark.parametrize(("where", "document"), documents(), ids=[where for where, _ in documents()])
def test_example_is_valid(where: str, document: dict[str, Any]) -> None:
    if document["kind"] in MODELS:
        MODELS[document["kind"]].model_validate(document)
    else:
        assert document["apiVersion"] == "v1"
