"""Every admission rule in the invalid-object catalogue is also enforced by the models.

The same file drives e2e/tests/test_admission.py against the real API server, so
a rule added on one side only shows up as a failing test on the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from lepton_operator.api import InferenceService, LeptonDataset, TrainingJob
from lepton_operator.api.common import ApiModel, Rule

CATALOGUE = Path(__file__).parent / "data" / "invalid_objects.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(CATALOGUE.read_text())
MODELS: dict[str, type[BaseModel]] = {
    "LeptonDataset": LeptonDataset,
    "TrainingJob": TrainingJob,
    "InferenceService": InferenceService,
}


def full_object(case: dict[str, Any], key: str = "object") -> dict[str, Any]:
    body = dict(case[key])
    body["apiVersion"] = "lepton.ai/v1alpha1"
    body["metadata"] = {"name": case.get("name_override", case["name"])}
    return body


def test_catalogue_covers_at_least_twelve_distinct_rules() -> None:
    assert len({case["rule"] for case in CASES}) >= 12
    assert len({case["name"] for case in CASES}) == len(CASES)
    assert {case["object"]["kind"] for case in CASES} == set(MODELS)


@pytest.mark.parametrize("case", [c for c in CASES if not c.get("transition")], ids=lambda c: c["name"])
def test_model_rejects_invalid_object(case: dict[str, Any]) -> None:
    model = MODELS[case["object"]["kind"]]
    with pytest.raises(ValidationError) as caught:
        model.model_validate(full_object(case))
    field = case["field"]
    leaf = field.rsplit(".", 1)[-1].split("[")[0]
    explained = False
    for error in caught.value.errors():
        loc = ".".join(str(part) for part in error["loc"])
        dotted_field = field.replace("[", ".").replace("]", "")
        if dotted_field.startswith(loc) and (leaf in loc.split(".") or leaf in error["msg"]):
            explained = True
    assert explained, f"no error names {field}: {caught.value.errors()}"
    if "message" in case:
        assert any(case["message"] in error["msg"] for error in caught.value.errors()), caught.value.errors()


@pytest.mark.parametrize("case", [c for c in CASES if c.get("transition")], ids=lambda c: c["name"])
def test_transition_cases_are_valid_objects_on_their_own(case: dict[str, Any]) -> None:
    """Old and new are each valid: only the change between them is refused (by CEL)."""
    model = MODELS[case["object"]["kind"]]
    model.model_validate(full_object(case, "before"))
    model.model_validate(full_object(case))


def all_rules() -> list[Rule]:
    models: list[type[ApiModel]] = []
    pending: list[type[ApiModel]] = [ApiModel]
    while pending:
        model = pending.pop()
        models.append(model)
        pending.extend(model.__subclasses__())
    return [rule for model in models for rule in model.__dict__.get("__rules__", ())]


def test_every_declared_rule_has_a_catalogue_case() -> None:
    """A rule nobody breaks in the catalogue is a rule nobody tested on the API server."""
    messages_seen = set()
    for case in CASES:
        if case.get("transition"):
            continue
        with pytest.raises(ValidationError) as caught:
            MODELS[case["object"]["kind"]].model_validate(full_object(case))
        messages_seen.update(error["msg"].removeprefix("Value error, ") for error in caught.value.errors())
    transition_fields = {case["field"].rsplit(".", 1)[-1] for case in CASES if case.get("transition")}
    for rule in all_rules():
        if rule.holds is None:
            assert rule.field_path and rule.field_path.lstrip(".") in transition_fields, rule.cel
        else:
            assert rule.message in messages_seen, f"no catalogue case breaks: {rule.message}"
