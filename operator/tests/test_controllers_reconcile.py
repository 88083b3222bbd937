"""The shared reconcile and the per-kind kopf handlers, without a cluster."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import pytest
from kubernetes.client import ApiException

from lepton_operator import controllers, metrics
from lepton_operator.api import RESOURCES
from lepton_operator.controllers import dataset, inference, reconcile, training
from lepton_operator.status import validation

LOGGER = logging.getLogger("test")
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SPECS: dict[str, dict[str, Any]] = {
    "LeptonDataset": {"source": {"uri": "https://data.example.com/a.tar"}, "modality": "image"},
    "TrainingJob": {"image": "trainer:1"},
    "InferenceService": {"model": {"name": "m", "source": {"claim": {"name": "models"}}}},
}


def body_of(kind: str, spec: Any, generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "uid": "u-1", "generation": generation},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, reason: str, message: str) -> None:
        self.events.append((reason, message))


def run(kind: str, body: dict[str, Any], retry: int = 0) -> tuple[str, dict[str, Any], Recorder]:
    patch: dict[str, Any] = {}
    warn = Recorder()
    outcome = reconcile.reconcile(kind, body, patch, retry=retry, logger=LOGGER, warn=warn, now=NOW)
    return outcome, patch, warn


def total(kind: str, outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value("lepton_reconcile_total", {"kind": kind, "outcome": outcome}) or 0.0


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_valid_object_gets_pending_status_and_is_counted(kind: str) -> None:
    before = total(kind, "accepted")
    outcome, patch, warn = run(kind, body_of(kind, SPECS[kind], generation=4))
    assert outcome == "accepted"
    assert patch["phase"] == "Pending" and patch["observedGeneration"] == 4
    assert {c["type"]: c["status"] for c in patch["conditions"]}["Validated"] == "True"
    assert warn.events == []
    assert total(kind, "accepted") == before + 1


def test_invalid_object_is_failed_with_one_warning_event_and_no_exception() -> None:
    before = total("TrainingJob", "invalid")
    outcome, patch, warn = run("TrainingJob", body_of("TrainingJob", {"image": "x", "workers": {"replicas": 0}}, 2))
    assert outcome == "invalid"
    assert patch["phase"] == "Failed"
    assert warn.events == [("InvalidSpec", "spec.workers.replicas: Input should be greater than or equal to 1")]
    assert total("TrainingJob", "invalid") == before + 1


def test_an_up_to_date_status_is_not_patched_again() -> None:
    kind, bad = "LeptonDataset", {"modality": "image"}
    _, first, _ = run(kind, body_of(kind, bad))
    outcome, patch, warn = run(kind, body_of(kind, bad, status=first))
    assert outcome == "invalid"
    assert patch == {} and warn.events == []  # a resume does not repeat the event


def test_missing_spec_and_generation_do_not_crash() -> None:
    body = {"metadata": {"name": "x"}}
    outcome, patch, _ = run("InferenceService", body)
    assert outcome == "invalid" and patch["observedGeneration"] == 0


def test_unexpected_error_is_recorded_then_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(validation, "foundation_status", explode)
    before = total("TrainingJob", "error")
    patch: dict[str, Any] = {}
    with pytest.raises(kopf.TemporaryError) as raised:
        reconcile.reconcile("TrainingJob", body_of("TrainingJob", SPECS["TrainingJob"]), patch, retry=2,
                            logger=LOGGER, warn=Recorder(), now=NOW)  # fmt: skip
    assert raised.value.delay == 20
    assert isinstance(raised.value.__cause__, RuntimeError)
    ready = {c["type"]: c for c in patch["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ReconcileError")
    assert "the disk is on fire" in ready["message"] and "retrying in 20 s" in ready["message"]
    assert total("TrainingJob", "error") == before + 1


def test_error_while_recording_the_error_still_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError("nope")

    monkeypatch.setattr(validation, "foundation_status", explode)
    monkeypatch.setattr(validation, "error_status", explode)
    patch: dict[str, Any] = {}
    with pytest.raises(kopf.TemporaryError):
        reconcile.reconcile("TrainingJob", body_of("TrainingJob", {}), patch, retry=0, logger=LOGGER, warn=Recorder())
    assert patch == {}


def test_a_child_the_api_server_refuses_as_invalid_is_terminal_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #19: a 422 Invalid child create looped forever in ReconcileError."""
    refused = 'PersistentVolumeClaim "x" is invalid: spec.resources.requests[storage]: Invalid value: "0": must be greater than zero'
    error = ApiException(status=422, reason="Unprocessable Entity")
    error.body = json.dumps({"kind": "Status", "reason": "Invalid", "code": 422, "message": refused})

    def refuse(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr(validation, "foundation_status", refuse)
    before = total("LeptonDataset", "invalid")
    patch: dict[str, Any] = {}
    warn = Recorder()
    with pytest.raises(kopf.PermanentError) as raised:
        reconcile.reconcile("LeptonDataset", body_of("LeptonDataset", SPECS["LeptonDataset"], 2), patch, retry=5,
                            logger=LOGGER, warn=warn, now=NOW)  # fmt: skip
    assert refused in str(raised.value)
    conditions = {c["type"]: c for c in patch["conditions"]}
    assert patch["phase"] == "Failed"
    assert (conditions["Stalled"]["status"], conditions["Stalled"]["reason"]) == ("True", "InvalidSpec")
    assert refused in conditions["Ready"]["message"] and "retrying" not in conditions["Ready"]["message"]
    assert warn.events == [("InvalidSpec", f"the API server refused a child object: {refused}")]
    assert total("LeptonDataset", "invalid") == before + 1
    again: dict[str, Any] = {}
    with pytest.raises(kopf.PermanentError):  # the resync, refused the same way: no write, no second event
        reconcile.reconcile("LeptonDataset", body_of("LeptonDataset", SPECS["LeptonDataset"], 2, status=patch), again,
                            retry=0, logger=LOGGER, warn=warn, now=NOW)  # fmt: skip
    assert again == {} and len(warn.events) == 1
