"""A LeptonDataset's status from what exists: its prepare Job, the Job's pods, its Secret.

Pure and level-based: the phase is computed from the Job of the *current* data
hash on every pass, never carried over, so a dataset that failed recovers as
soon as a fixed spec makes a new Job that succeeds (Fluid #6160), and a missing
Secret is a reason on the object until the Secret appears (Datashim #362).

============  ==============================================================
phase         when
============  ==============================================================
Pending       the Secret is missing, or the Job is about to be created
Preparing     the Job runs (a failed attempt that will be retried says why)
Ready         the Job completed and its pod left a valid result document
Failed        the Job failed (the preparer's reason when it left one), or it
              completed without a readable result
============  ==============================================================

The numbers (``records``, ``sizeBytes``, ``shards``, ``digest``) come only from
the preparer's result document (schema ``lepton.ai/prepare-result/v1``, read
from the pod's termination message) and are cleared (``null`` in the merge
patch) whenever the dataset is not Ready, so they always describe the data the
current spec asks for.

``progress {bytesDone, bytesTotal}`` moves while the Job runs: the controller
polls the running preparer's ``GET /progress`` (schema
``lepton.ai/prepare-progress/v1``) and passes the last answer as ``live``. The
live document and the final result go through one parser,
:func:`parse_progress`. While Preparing, a pass without a new report keeps the
progress already shown (a failed poll clears nothing); outside Preparing and
Ready it is cleared like the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lepton_operator.api.common import Condition
from lepton_operator.api.dataset import LeptonDatasetStatus
from lepton_operator.status import claims
from lepton_operator.status import conditions as cond
from lepton_operator.status.conditions import SecretProblem

RESULT_SCHEMA = "lepton.ai/prepare-result/v1"
PROGRESS_SCHEMA = "lepton.ai/prepare-progress/v1"
PREPARED = "Prepared"
#: Status fields that only a finished preparation sets (and progress, also while Preparing); nulled otherwise.
RESULT_FIELDS = ("sizeBytes", "records", "shards", "digest", "progress", "completionTime")


@dataclass(frozen=True)
class PrepareResult:
    """The preparer's result document, parsed."""

    ok: bool
    reason: str = ""
    message: str = ""
    records: int = 0
    bytes: int = 0
    shards: int = 0
    digest: str = ""
    source_bytes: int = 0


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_progress(document: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{bytesDone, bytesTotal}`` of a live progress document or of a successful result, else ``None``.

    A result says the whole source was fetched (``sourceBytes`` of
    ``sourceBytes``); a live report says how far fetching has got, with
    ``bytesTotal`` null while the source has not said its size.
    """
    if not isinstance(document, Mapping):
        return None
    schema = document.get("schema")
    if schema == RESULT_SCHEMA and document.get("ok") is True:
        done = document.get("sourceBytes") or 0
        return {"bytesDone": done, "bytesTotal": done} if _count(done) else None
    if schema != PROGRESS_SCHEMA or not _count(document.get("bytesDone")):
        return None
    total = document.get("bytesTotal")
    return {"bytesDone": document["bytesDone"], "bytesTotal": total if _count(total) else None}


def parse_result(text: str | None) -> PrepareResult | None:
    """A result document, or ``None`` when ``text`` is not one (empty, not JSON, other schema)."""
    if not text:
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("schema") != RESULT_SCHEMA:
        return None
    if not document.get("ok"):
        return PrepareResult(False, str(document.get("reason") or "PrepareFailed"), str(document.get("message") or ""))
    numbers = [document.get(key) for key in ("records", "bytes", "shards", "sourceBytes")]
    progress = parse_progress(document)
    if not all(_count(n) for n in numbers[:3]) or progress is None:
        return None
    return PrepareResult(
        True, records=document["records"], bytes=document["bytes"], shards=document["shards"],
        digest=str(document.get("digest") or ""), source_bytes=progress["bytesDone"],
    )  # fmt: skip


def termination_message(pod: Mapping[str, Any]) -> str | None:
    """The termination message of the pod's first terminated container."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
        if terminated and terminated.get("message"):
            return str(terminated["message"])
    return None


def progress_pod(phase: str, pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The pod whose live progress to read: the newest running pod of a Preparing dataset's Job."""
    if phase != "Preparing":
        return None
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"
               and not (p.get("metadata") or {}).get("deletionTimestamp")]  # fmt: skip
    return max(running, key=_finished, default=None)


def _finished(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def latest_result(pods: Sequence[Mapping[str, Any]], phase: str) -> PrepareResult | None:
    """The result left by the newest pod in ``phase``: a success for Succeeded, a failure for Failed.

    A pod that failed after writing a success document (killed at the very end)
    tells nothing about why it failed, so it is skipped.
    """
    for pod in sorted(pods, key=_finished, reverse=True):
        if (pod.get("status") or {}).get("phase") == phase:
            result = parse_result(termination_message(pod))
            if result is not None and result.ok == (phase == "Succeeded"):
                return result
    return None


def _job_condition(job: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == ctype and condition.get("status") == "True":
            return dict(condition)
    return None


@dataclass(frozen=True)
class Outcome:
    """Phase plus the reason and message every condition of this pass carries."""

    phase: str
    reason: str
    message: str
    result: PrepareResult | None = None


def outcome(
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    secret: SecretProblem | None,
    claim: Mapping[str, Any] | None = None,
) -> Outcome:
    """What the dataset's children say, as one phase + reason + message."""
    if secret is not None:
        return Outcome("Pending", secret.reason, secret.message)
    if job is None:
        return Outcome("Pending", "CreatingJob", "creating the prepare Job")
    name = (job.get("metadata") or {}).get("name", "")
    if _job_condition(job, "Complete") is not None:
        result = latest_result(pods, "Succeeded")
        if result is None:
            return Outcome("Failed", "ResultMissing", f"Job {name} completed without a valid prepare result document")
        return Outcome(
            "Ready", "Prepared",
            f"{result.records} records in {result.shards} shards ({result.bytes} bytes), manifest {result.digest}",
            result,
        )  # fmt: skip
    failed = _job_condition(job, "Failed")
    attempt = latest_result(pods, "Failed")
    if failed is not None:
        if attempt is not None:
            return Outcome("Failed", attempt.reason, attempt.message)
        reason = str(failed.get("reason") or "JobFailed")
        return Outcome("Failed", reason, f"Job {name} failed: {failed.get('message') or reason}")
    if attempt is not None:
        return Outcome("Preparing", "Retrying", f"an attempt failed ({attempt.reason}: {attempt.message}); retrying")
    waiting = claims.unbound(claim)
    if waiting is not None:
        return Outcome("Preparing", claims.CLAIM_PENDING, f"{waiting}; Job {name} waits for it")
    return Outcome("Preparing", "Preparing", f"Job {name} is preparing the data")


def dataset_status(
    generation: int,
    claim: str,
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    secret: SecretProblem | None,
    existing: Mapping[str, Any] | None,
    now: datetime,
    claim_object: Mapping[str, Any] | None = None,
    live: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The merge patch of status for a dataset whose spec is valid.

    ``claim_object``: the PVC as read; ``live``: the last ``/progress``
    document read, by the uid of the pod that served it (one of ``pods``, or
    it is ignored).
    """
    found = outcome(job, pods, secret, claim_object)
    ready = found.phase == "Ready"
    failed = found.phase == "Failed"
    stalled = failed or secret is not None
    if secret is not None:
        validated = cond.make(cond.VALIDATED, False, secret.reason, secret.message, generation)
    else:
        validated = cond.make(cond.VALIDATED, True, "Valid", "spec is valid; what the source references exists", generation)
    new: list[Condition] = [
        validated,
        cond.make(PREPARED, ready, found.reason, found.message, generation),
        cond.ready(ready, "Ready" if ready else found.reason, found.message, generation),
        cond.reconciling(not (ready or stalled), found.reason, found.message, generation),
        cond.stalled(stalled, found.reason, found.message, generation),
    ]
    current = cond.parse_conditions((existing or {}).get("conditions"))
    fields: dict[str, Any] = {
        "phase": found.phase,
        "observed_generation": generation,
        "conditions": cond.set_conditions(current, new, cond.format_time(now)),
        "claim_name": claim,
    }
    job_status = (job or {}).get("status") or {}
    if job_status.get("startTime"):
        fields["start_time"] = job_status["startTime"]
    if found.result is not None:
        result = found.result
        fields.update(
            size_bytes=result.bytes, records=result.records, shards=result.shards, digest=result.digest,
            progress={"bytes_done": result.source_bytes, "bytes_total": result.source_bytes},
            completion_time=job_status.get("completionTime"),
        )  # fmt: skip
    elif found.phase == "Preparing":
        kept = (existing or {}).get("progress") if (existing or {}).get("phase") == "Preparing" else None
        uids = {str((pod.get("metadata") or {}).get("uid")) for pod in pods}
        reports = [parse_progress(document) for uid, document in (live or {}).items() if uid in uids]
        progress = next((report for report in reports if report is not None), None) or kept
        if progress:
            fields["progress"] = progress
    status = LeptonDatasetStatus.model_validate(fields).to_wire()
    for key in RESULT_FIELDS:
        status.setdefault(key, None)
    if "startTime" not in status:
        status["startTime"] = None
    return status
