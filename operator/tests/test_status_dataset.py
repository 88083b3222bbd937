"""A dataset's phase, conditions and numbers from its Job, pods and Secret."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from lepton_operator.api.dataset import LeptonDatasetStatus
from lepton_operator.status import conditions as cond
from lepton_operator.status import dataset as status

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
OK = {"schema": status.RESULT_SCHEMA, "ok": True, "records": 20, "bytes": 40960, "shards": 4,
      "digest": "sha256:" + "d" * 64, "sourceBytes": 3000, "splits": {}}  # fmt: skip


def job(*conditions: str, reason: str = "", **job_status: Any) -> dict[str, Any]:
    listed = [{"type": c, "status": "True", "reason": reason, "message": f"{c} happened"} for c in conditions]
    return {"metadata": {"name": "d-prepare-1"},
            "status": {"conditions": listed, "startTime": "2026-01-02T03:00:00Z", **job_status}}  # fmt: skip


def pod(phase: str, message: dict[str, Any] | str | None, created: str = "2026-01-02T03:00:00Z") -> dict[str, Any]:
    text = json.dumps(message) if isinstance(message, dict) else message
    terminated = {"exitCode": 0 if phase == "Succeeded" else 3, "message": text} if text else {"exitCode": 1}
    return {"metadata": {"creationTimestamp": created},
            "status": {"phase": phase, "containerStatuses": [{"name": "prepare", "state": {"terminated": terminated}}]}}  # fmt: skip


def compute(job_: dict[str, Any] | None, pods: list[dict[str, Any]], secret: cond.SecretProblem | None = None,
            existing: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    return status.dataset_status(3, "d", job_, pods, secret, existing, NOW)


def conditions(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in result["conditions"]}


def test_complete_job_with_result_is_ready_with_the_numbers() -> None:
    result = compute(job("Complete", completionTime="2026-01-02T03:01:00Z"), [pod("Succeeded", OK)])
    assert result["phase"] == "Ready" and result["observedGeneration"] == 3 and result["claimName"] == "d"
    assert (result["records"], result["sizeBytes"], result["shards"]) == (20, 40960, 4)
    assert result["digest"] == OK["digest"] and result["progress"] == {"bytesDone": 3000, "bytesTotal": 3000}
    assert result["completionTime"] == "2026-01-02T03:01:00Z" and result["startTime"] == "2026-01-02T03:00:00Z"
    assert conditions(result) == {"Validated": ("True", "Valid"), "Prepared": ("True", "Prepared"),
                                  "Ready": ("True", "Ready"), "Reconciling": ("False", "Prepared"),
                                  "Stalled": ("False", "Prepared")}  # fmt: skip
    LeptonDatasetStatus.model_validate({k: v for k, v in result.items() if v is not None})


def test_running_job_is_preparing_and_clears_old_numbers() -> None:
    result = compute(job(), [], existing={"phase": "Ready", "records": 5, "digest": "sha256:old"})
    assert result["phase"] == "Preparing" and result["records"] is None and result["digest"] is None
    assert conditions(result)["Reconciling"] == ("True", "Preparing")


def test_failed_attempt_being_retried_says_why() -> None:
    failed = {"schema": status.RESULT_SCHEMA, "ok": False, "reason": "SourceUnreachable", "message": "GET x: refused"}
    result = compute(job(failed=1), [pod("Failed", failed)])
    assert result["phase"] == "Preparing"
    prepared = next(c for c in result["conditions"] if c["type"] == "Prepared")
    assert prepared["reason"] == "Retrying" and "SourceUnreachable: GET x: refused" in prepared["message"]


def test_failed_job_carries_the_preparers_reason() -> None:
    failed = {"schema": status.RESULT_SCHEMA, "ok": False, "reason": "ChecksumMismatch", "message": "sha256 is a, want b"}
    result = compute(job("Failed", reason="PodFailurePolicy"), [pod("Failed", failed)])
    assert result["phase"] == "Failed"
    assert conditions(result)["Prepared"] == ("False", "ChecksumMismatch")
    assert conditions(result)["Stalled"] == ("True", "ChecksumMismatch")
    assert conditions(result)["Ready"] == ("False", "ChecksumMismatch")


def test_failed_job_without_a_result_uses_the_jobs_reason() -> None:
    result = compute(job("Failed", reason="DeadlineExceeded"), [pod("Failed", None)])
    assert result["phase"] == "Failed" and conditions(result)["Prepared"] == ("False", "DeadlineExceeded")


def test_complete_without_a_result_is_failed_not_ready() -> None:
    for message in (None, "not json", json.dumps({"schema": "other"}), json.dumps({**OK, "records": -1})):
        result = compute(job("Complete"), [pod("Succeeded", message)])
        assert result["phase"] == "Failed" and conditions(result)["Prepared"][1] == "ResultMissing"


def test_failed_recovers_when_a_new_job_succeeds() -> None:
    failed = compute(job("Failed", reason="BackoffLimitExceeded"), [])
    recovered = compute(job("Complete"), [pod("Succeeded", OK)], existing=failed)
    assert recovered["phase"] == "Ready" and conditions(recovered)["Stalled"] == ("False", "Prepared")


def test_missing_secret_is_a_reason_not_a_job() -> None:
    problem = cond.SecretProblem("SecretNotFound", "Secret creds not found in namespace ns")
    result = compute(None, [], secret=problem)
    assert result["phase"] == "Pending"
    assert conditions(result)["Validated"] == ("False", "SecretNotFound")
    assert conditions(result)["Stalled"] == ("True", "SecretNotFound")
    assert "creds" in next(c["message"] for c in result["conditions"] if c["type"] == "Ready")


def test_newest_pod_result_wins() -> None:
    old = {**OK, "records": 1}
    pods = [pod("Succeeded", old, "2026-01-02T03:00:00Z"), pod("Succeeded", OK, "2026-01-02T03:05:00Z")]
    assert compute(job("Complete"), pods)["records"] == 20


def test_transition_time_is_kept_while_status_holds() -> None:
    first = compute(job(), [])
    later = status.dataset_status(3, "d", job(), [], None, first, NOW.replace(hour=9))
    assert first["conditions"] == later["conditions"]


def test_a_success_document_on_a_failed_pod_is_not_a_reason() -> None:
    result = compute(job("Failed", reason="BackoffLimitExceeded"), [pod("Failed", OK)])
    assert conditions(result)["Prepared"] == ("False", "BackoffLimitExceeded")
    assert compute(job(), [pod("Failed", OK)])["phase"] == "Preparing"


def test_an_unbound_claim_is_named_while_the_job_waits() -> None:
    claim = {"metadata": {"name": "d"}, "spec": {"storageClassName": "fast"}, "status": {"phase": "Pending"}}
    result = status.dataset_status(3, "d", job(), [], None, None, NOW, claim_object=claim)
    prepared = next(c for c in result["conditions"] if c["type"] == "Prepared")
    assert result["phase"] == "Preparing" and prepared["reason"] == "ClaimPending" and "fast" in prepared["message"]
    bound = {**claim, "status": {"phase": "Bound"}}
    assert conditions(status.dataset_status(3, "d", job(), [], None, None, NOW, claim_object=bound))["Prepared"] == (
        "False", "Preparing")


def running(uid: str, created: str = "2026-01-02T03:00:00Z") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "creationTimestamp": created}, "status": {"phase": "Running"}}


LIVE = {"schema": status.PROGRESS_SCHEMA, "stage": "fetching", "bytesDone": 1000, "bytesTotal": 3000, "records": 0}


def test_live_report_of_the_running_pod_is_the_progress_while_preparing() -> None:
    result = status.dataset_status(3, "d", job(), [running("p1")], None, {"phase": "Preparing"}, NOW, live={"p1": LIVE})
    assert result["phase"] == "Preparing" and result["progress"] == {"bytesDone": 1000, "bytesTotal": 3000}
    later = status.dataset_status(3, "d", job(), [running("p1")], None, result, NOW, live={"p1": {**LIVE, "bytesDone": 2500}})
    assert later["progress"] == {"bytesDone": 2500, "bytesTotal": 3000}


def test_without_a_new_report_preparing_keeps_the_last_progress() -> None:
    shown = {"phase": "Preparing", "progress": {"bytesDone": 1000, "bytesTotal": 3000}}
    for live in ({}, {"old-pod": {**LIVE, "bytesDone": 2900}}, {"p1": {"schema": "other", "bytesDone": 5}}):
        kept = status.dataset_status(3, "d", job(), [running("p1")], None, shown, NOW, live=live)
        assert kept["progress"] == shown["progress"]
    # progress of a dataset that was Ready (the old data) is not kept for a new preparation
    assert compute(job(), [running("p1")], existing={"phase": "Ready", "progress": {"bytesDone": 9}})["progress"] is None


def test_result_and_live_report_go_through_one_progress_parser() -> None:
    assert status.parse_progress(OK) == {"bytesDone": 3000, "bytesTotal": 3000}
    assert status.parse_progress(LIVE) == {"bytesDone": 1000, "bytesTotal": 3000}
    assert status.parse_progress({**LIVE, "bytesTotal": None}) == {"bytesDone": 1000, "bytesTotal": None}
    for other in ({**OK, "ok": False}, {**LIVE, "bytesDone": -1}, {**LIVE, "schema": "x"}, None):
        assert status.parse_progress(other) is None


def test_the_newest_running_pod_of_a_preparing_dataset_reports() -> None:
    pods = [running("old", "2026-01-02T03:00:00Z"), running("new", "2026-01-02T03:02:00Z"), pod("Failed", None)]
    assert status.progress_pod("Preparing", pods) is pods[1]
    assert status.progress_pod("Ready", pods) is None
    assert status.progress_pod("Preparing", [pod("Failed", None)]) is None
