"""From a raw spec to the foundation status: field paths, conditions, phases, never a crash."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client import ApiException
from pydantic import ValidationError

from lepton_operator.api import RESOURCES
from lepton_operator.api.common import Condition
from lepton_operator.status import conditions as cond
from lepton_operator.status import validation as v

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=3)
CATALOGUE = Path(__file__).parent / "data" / "invalid_objects.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(CATALOGUE.read_text())

VALID_SPECS: dict[str, dict[str, Any]] = {
    "LeptonDataset": {"source": {"uri": "s3://bucket-a/images/"}, "modality": "image"},
    "TrainingJob": {"image": "trainer:1", "workers": {"replicas": 2}},
    "InferenceService": {"model": {"name": "resnet", "source": {"uri": "s3://models/resnet/"}}},
}


def status_for(kind: str, spec: Any, generation: int = 1, existing: Any = None, now: datetime = NOW) -> dict[str, Any]:
    return v.foundation_status(kind, generation, spec, v.parse_spec(kind, spec), existing, now)


def by_type(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_every_resource_has_models() -> None:
    assert set(v.KINDS) == {info.kind for info in RESOURCES}


# --- field paths ---------------------------------------------------------------------------


def errors_of(kind: str, spec: Any) -> ValidationError:
    parsed = v.parse_spec(kind, spec)
    assert isinstance(parsed, ValidationError)
    return parsed


def test_paths_are_camel_case_with_spec_prefix_and_list_indices() -> None:
    spec = {
        "image": "x",
        "workers": {
            "replicas": 0,
            "nprocPerNode": 0,
            "tolerations": [{"operator": "Exists"}, {"operator": "Exists", "value": "a"}],
        },
    }
    message = v.error_message(errors_of("TrainingJob", spec), spec)
    assert "spec.workers.replicas: Input should be greater than or equal to 1" in message
    assert "spec.workers.nprocPerNode: " in message
    assert "spec.workers.tolerations[1]: a toleration with operator Exists must not set value" in message
    assert "Value error" not in message


def test_model_level_rules_name_the_object_they_check() -> None:
    spec = {"image": "x", "workers": {"replicas": 3, "minReplicas": 4, "maxReplicas": 2}}
    message = v.error_message(errors_of("TrainingJob", spec), spec)
    assert message == "spec.workers: workers.minReplicas must not exceed workers.maxReplicas"
    top = {"image": "x", "command": ["a"], "entrypoint": {"module": "m"}}
    assert v.error_message(errors_of("TrainingJob", top), top) == "spec: set command or entrypoint, not both"


def test_missing_and_unknown_fields_and_non_objects() -> None:
    spec = {"modality": "image", "surprise": 1}
    message = v.error_message(errors_of("LeptonDataset", spec), spec)
    assert "spec.source: Field required" in message
    assert "spec.surprise: Extra inputs are not permitted" in message
    assert v.error_message(errors_of("LeptonDataset", None), None).startswith("spec: ")
    nested = {"source": "s3://bucket-a/x", "modality": "image"}
    assert v.error_message(errors_of("LeptonDataset", nested), nested).startswith("spec.source: ")


def test_field_path_drops_schema_tags_but_keeps_real_keys() -> None:
    data = {"limits": {"int": "5", "cpu": "x"}}
    assert v.field_path(("limits", "int"), data) == "spec.limits.int"
    assert v.field_path(("a", "function-after[_check(), Model]", "b"), {"a": {"b": 1}}) == "spec.a.b"
    assert v.field_path(("a", "union[int,str]", "int"), {"a": 1}) == "spec.a"
    assert v.field_path(("items", 3, "name"), {"items": [{}]}) == "spec.items[3].name"
    assert v.field_path((), {}, prefix="status") == "status"


def test_messages_never_echo_the_input() -> None:
    secret = "AKIAIOSFODNN7EXAMPLE-wJalrXUtnFEMI"
    spec = {"source": {"uri": f"ftp://{secret}@host/x"}, "modality": "image", "verify": {"sha256": secret}}
    message = v.error_message(errors_of("LeptonDataset", spec), spec)
    assert "spec.source.uri" in message and "spec.verify.sha256" in message
    assert secret not in message


def test_many_errors_are_counted_not_listed() -> None:
    spec = {f"bogus{i}": i for i in range(25)}
    message = v.error_message(errors_of("InferenceService", spec), spec)
    assert message.count("spec.") == v.MAX_LISTED_ERRORS
    assert message.endswith(f"and {25 + 1 - v.MAX_LISTED_ERRORS} more")  # +1: model is missing


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if not c.get("transition") and c["field"].startswith("spec")],
    ids=lambda c: c["name"],
)
def test_catalogue_objects_get_a_message_naming_their_field(case: dict[str, Any]) -> None:
    """Objects the server refuses would, if stored anyway, be InvalidSpec naming the same field."""
    kind, spec = case["object"]["kind"], case["object"]["spec"]
    status = status_for(kind, spec, generation=2)
    conditions = by_type(status)
    assert status["phase"] == "Failed"
    assert conditions["Validated"]["reason"] == "InvalidSpec"
    field = case["field"]
    leaf = field.rsplit(".", 1)[-1].split("[")[0]
    explained = [
        part
        for part in conditions["Validated"]["message"].split("; ")
        if field.startswith(part.split(": ", 1)[0]) and leaf in part
    ]
    assert explained, f"no part of the message names {field}: {conditions['Validated']['message']}"


# --- the status --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(VALID_SPECS))
def test_valid_spec_is_pending_and_honest(kind: str) -> None:
    status = status_for(kind, VALID_SPECS[kind], generation=3)
    assert status["phase"] == "Pending"
    assert status["observedGeneration"] == 3
    conditions = by_type(status)
    assert [c["type"] for c in status["conditions"]] == ["Validated", "Ready", "Reconciling", "Stalled"]
    assert {t: c["status"] for t, c in conditions.items()} == {
        "Validated": "True",
        "Ready": "False",
        "Reconciling": "True",
        "Stalled": "False",
    }
    assert conditions["Ready"]["reason"] == "Pending"
    assert kind in conditions["Ready"]["message"] and "waiting" in conditions["Ready"]["message"]
    for c in status["conditions"]:
        assert c["observedGeneration"] == 3
        assert c["lastTransitionTime"] == "2026-05-01T12:00:00Z"
        Condition.model_validate(c)
    v.KINDS[kind].status.model_validate(status)


@pytest.mark.parametrize("kind", sorted(VALID_SPECS))
def test_invalid_spec_is_failed_and_stalled(kind: str) -> None:
    spec = {**VALID_SPECS[kind], "notAField": True}
    status = status_for(kind, spec, generation=5)
    conditions = by_type(status)
    assert status["phase"] == "Failed"
    assert status["observedGeneration"] == 5
    assert {t: (c["status"], c["reason"]) for t, c in conditions.items()} == {
        "Validated": ("False", "InvalidSpec"),
        "Ready": ("False", "InvalidSpec"),
        "Reconciling": ("False", "InvalidSpec"),
        "Stalled": ("True", "InvalidSpec"),
    }
    assert conditions["Validated"]["message"] == "spec.notAField: Extra inputs are not permitted"
    assert conditions["Stalled"]["message"] == conditions["Validated"]["message"]


def test_failed_is_recomputed_when_the_spec_is_fixed() -> None:
    broken = status_for("TrainingJob", {"image": "x", "workers": {"replicas": 0}}, generation=1)
    fixed = status_for("TrainingJob", VALID_SPECS["TrainingJob"], generation=2, existing=broken, now=LATER)
    assert fixed["phase"] == "Pending"
    conditions = by_type(fixed)
    assert conditions["Validated"]["status"] == "True"
    assert conditions["Validated"]["lastTransitionTime"] == cond.format_time(LATER)  # flipped
    assert conditions["Ready"]["lastTransitionTime"] == cond.format_time(NOW)  # False before and after


def test_reconciling_the_same_object_again_needs_no_patch() -> None:
    for kind, spec in VALID_SPECS.items():
        first = status_for(kind, spec, generation=4)
        again = status_for(kind, spec, generation=4, existing=first, now=LATER)
        assert again == first
        assert not v.needs_patch(first, again)
        assert v.needs_patch({**first, "phase": "Failed"}, again)
        assert v.needs_patch(None, first)


def test_other_conditions_and_fields_are_kept() -> None:
    existing = {
        "phase": "Pending",
        "claimName": "data",
        "conditions": [{"type": "Prepared", "status": "False", "reason": "NotYet", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }
    status = status_for("LeptonDataset", VALID_SPECS["LeptonDataset"], existing=existing)
    assert status["conditions"][0]["type"] == "Prepared"
    assert "claimName" not in status  # a merge patch: fields it does not own stay as they are


def test_error_status_records_reconcile_error_and_keeps_validated() -> None:
    before = status_for("InferenceService", VALID_SPECS["InferenceService"], generation=2)
    status = v.error_status("InferenceService", 2, RuntimeError("boom"), before, LATER, retry_in=20)
    assert "phase" not in status
    conditions = by_type(status)
    assert conditions["Validated"] == by_type(before)["Validated"]
    assert conditions["Ready"]["reason"] == "ReconcileError"
    assert conditions["Ready"]["message"] == "reconcile failed: RuntimeError: boom; retrying in 20 s"
    assert conditions["Reconciling"]["status"] == "True"
    assert conditions["Stalled"]["status"] == "False"
    bare = v.error_status("TrainingJob", 1, KeyError(), None, NOW)
    assert by_type(bare)["Ready"]["message"] == "reconcile failed: KeyError; will retry"
    huge = v.error_status("TrainingJob", 1, ValueError("x" * 10_000), None, NOW, retry_in=5)
    assert len(by_type(huge)["Ready"]["message"]) <= 1024


def test_to_plain_copies_nested_mappings() -> None:
    class View(dict[str, Any]):
        pass

    source = View(a=View(b=[View(c=1)]))
    plain = v.to_plain(source)
    assert plain == {"a": {"b": [{"c": 1}]}}
    assert type(plain["a"]["b"][0]) is dict


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(
    st.sampled_from(sorted(VALID_SPECS)),
    st.integers(min_value=0, max_value=2**53),
    json_values | st.dictionaries(st.sampled_from(["source", "modality", "image", "workers", "model", "replicas"]), json_values),
)
def test_any_input_gives_a_schema_valid_status_never_an_exception(kind: str, generation: int, spec: Any) -> None:
    status = status_for(kind, spec, generation)
    v.KINDS[kind].status.model_validate(status)
    assert status["phase"] in ("Pending", "Failed")
    assert status["observedGeneration"] == generation
    assert all(c["observedGeneration"] == generation for c in status["conditions"])
    assert len({c["type"] for c in status["conditions"]}) == len(status["conditions"])


@given(
    st.sampled_from(sorted(VALID_SPECS)),
    st.dictionaries(st.sampled_from(["replicas", "image", "extra"]), st.integers(-5, 5) | st.text(max_size=3)),
)
def test_valid_specs_with_noise_stay_failed_or_pending_consistently(kind: str, noise: dict[str, Any]) -> None:
    spec = {**VALID_SPECS[kind], **noise}
    status = status_for(kind, spec)
    parsed_ok = not isinstance(v.parse_spec(kind, spec), ValidationError)
    assert (status["phase"] == "Pending") is parsed_ok
    assert (by_type(status)["Validated"]["status"] == "True") is parsed_ok


def test_a_refused_request_is_described_by_the_api_servers_message() -> None:
    body = json.dumps({"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
                       "message": 'pods "w-0" is forbidden: violates PodSecurity "restricted:latest": runAsUser=0'})
    error = ApiException(status=403, reason="Forbidden")
    error.body = body
    assert v.describe_error(error) == (
        'ApiException 403 Forbidden: pods "w-0" is forbidden: violates PodSecurity "restricted:latest": runAsUser=0'
    )
    status = v.error_status("TrainingJob", 1, error, None, NOW)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"].startswith("reconcile failed: ApiException 403 Forbidden: pods")
    error.body = "<html>bad gateway</html>"
    assert v.describe_error(error).startswith("ApiException: (403)")


def refusal(code: int, reason: str, message: str) -> ApiException:
    error = ApiException(status=code, reason=reason)
    error.body = json.dumps({"kind": "Status", "status": "Failure", "reason": reason, "code": code, "message": message})
    return error


POD_REFUSED = 'Pod "w-0" is invalid: spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu limit of 1'


def test_only_a_422_invalid_is_a_refusal_of_the_spec() -> None:
    assert v.api_refusal(refusal(422, "Invalid", POD_REFUSED)) == POD_REFUSED
    assert v.api_refusal(refusal(422, "Invalid", POD_REFUSED).__class__(status=422)) is None  # no body
    for code, reason in ((409, "Conflict"), (403, "Forbidden"), (429, "TooManyRequests"), (500, "InternalError"),
                         (422, "Unprocessable")):  # fmt: skip
        assert v.api_refusal(refusal(code, reason, "no")) is None, (code, reason)
    garbled = refusal(422, "Invalid", "x")
    garbled.body = b"<html>"
    assert v.api_refusal(garbled) is None
    assert v.api_refusal(RuntimeError("boom")) is None


@pytest.mark.parametrize("kind", sorted(v.KINDS))
def test_a_refused_child_is_a_terminal_invalid_spec_with_the_servers_message(kind: str) -> None:
    before = {"phase": "Pending", "conditions": [{"type": "Validated", "status": "True", "reason": "Valid"}]}
    status = v.refused_status(kind, 3, POD_REFUSED, before, NOW)
    assert status["phase"] == "Failed" and status["observedGeneration"] == 3
    conditions = by_type(status)
    for ctype, flag in (("Validated", "False"), ("Ready", "False"), ("Reconciling", "False"), ("Stalled", "True")):
        assert (conditions[ctype]["status"], conditions[ctype]["reason"]) == (flag, "InvalidSpec"), ctype
    assert POD_REFUSED in conditions["Stalled"]["message"] and "refused a child" in conditions["Ready"]["message"]
