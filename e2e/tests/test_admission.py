"""The real API server refuses every object in the invalid-object catalogue.

Each case breaks one rule (OpenAPI type/enum/bound/pattern, a CEL cross-field
rule, a CEL transition rule, strict field validation) and the server's message
must name the field, so users see *what* to fix at `kubectl apply` time instead
of a condition minutes later. The same catalogue runs against the pydantic
models in operator/tests/test_api_invalid.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.kube import Kubectl, KubectlError, condition, wait_until
from operator_fixtures import RunningOperator

CATALOGUE = Path(__file__).resolve().parents[2] / "operator" / "tests" / "data" / "invalid_objects.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(CATALOGUE.read_text())

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("lepton_crds")]


def manifest(case: dict[str, Any], key: str = "object") -> dict[str, Any]:
    body = dict(case[key])
    body["apiVersion"] = "lepton.ai/v1alpha1"
    body["metadata"] = {"name": case.get("name_override", case["name"])}
    return body


@pytest.mark.parametrize("case", CASES, ids=lambda case: case["name"])
def test_api_server_rejects_invalid_object(case: dict[str, Any], kubectl: Kubectl) -> None:
    if "before" in case:
        kubectl.apply(manifest(case, "before"), "--server-side")
    with pytest.raises(KubectlError) as refused:
        kubectl.apply(manifest(case), "--server-side")
    message = refused.value.stderr
    assert case["field"] in message, f"{case['rule']}: the error does not name {case['field']}:\n{message}"
    assert case.get("message", "") in message, f"{case['rule']}: the error does not say {case['message']!r}:\n{message}"


def test_valid_object_next_to_each_rule_is_accepted(kubectl: Kubectl) -> None:
    """Guard against rules so strict that they refuse everything: the fixed objects pass."""
    for case in CASES:
        if "before" in case:
            obj = manifest(case, "before")
            obj["metadata"]["name"] = f"{case['name']}-ok"
            kubectl.apply(obj, "--server-side", "--dry-run=server")


def test_server_fills_defaults_from_the_models(kubectl: Kubectl) -> None:
    kubectl.apply(
        {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "defaults"},
         "spec": {"image": "trainer:1"}},
        "--server-side",
    )
    spec = kubectl.get("trainingjob", "defaults")["spec"]
    assert spec["workers"]["replicas"] == 1
    assert spec["masterPort"] == 29500
    assert spec["restartPolicy"]["retryableExitCodes"] == [130, 137, 143]
    assert spec["runPolicy"] == {"cleanPodPolicy": "Running", "suspend": False}


def test_storage_may_grow(kubectl: Kubectl) -> None:
    """The no-shrink transition rule lets a claim grow."""
    base = {"apiVersion": "lepton.ai/v1alpha1", "kind": "LeptonDataset", "metadata": {"name": "grows"},
            "spec": {"source": {"uri": "s3://bucket-a/x/"}, "modality": "text", "storage": {"size": "1Gi"}}}
    kubectl.apply(base, "--server-side")
    base["spec"]["storage"]["size"] = "2Gi"
    kubectl.apply(base, "--server-side")
    assert kubectl.get("lds", "grows")["spec"]["storage"]["size"] == "2Gi"


def test_a_child_the_api_server_refuses_ends_in_invalid_spec_not_a_retry_loop(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    """What admission cannot know (issue #19): a Pod-only rule (an extended resource needs a limit equal to
    its request) refuses the worker pods; the job ends Failed/Stalled with the API server's message."""
    job = {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "refused-pods"},
           "spec": {"image": "trainer:1", "workers": {"resources": {"requests": {"example.com/widget": 1}}}}}  # fmt: skip
    kubectl.apply(job, "--server-side")

    def stalled() -> dict[str, Any]:
        found = condition(kubectl.get("trainingjob", "refused-pods"), "Stalled") or {}
        return found if found.get("status") == "True" else {}

    found = wait_until(stalled, 60, "tj/refused-pods Stalled")
    assert found["reason"] == "InvalidSpec"
    assert "Limit must be set for non overcommitable resources" in found["message"]  # the API server's words
    assert "refused a child" in found["message"]
    obj = kubectl.get("trainingjob", "refused-pods")
    assert obj["status"]["phase"] == "Failed"
    ready = condition(obj, "Ready")
    assert ready is not None and ready["reason"] == "InvalidSpec"
    assert kubectl.get("pods") == []
