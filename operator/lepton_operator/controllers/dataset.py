"""kopf wiring and the reconciler of LeptonDataset (one loop per object, see ``loop``).

A pass: parse the spec (an invalid one is reported by ``status.validation``
and nothing is created); check the source's Secret and its keys (names only,
values are never read into anything we write); apply the claim; find the Job of
the current data hash, creating it when missing; list its pods (their
termination messages carry the preparer's result); compute the status with
``status.dataset`` and patch it when it changed. The prepare pods' NetworkPolicy
(``render.network``) is synced first, by ``network.POLICIES``: once per
generation, deleted when disabled, before any Job exists.

A data-changing spec edit gives a new hash: Jobs of other hashes are deleted
with foreground propagation and the new Job is created only once they are gone,
so two preparers never write the same claim at once. Job events wake the loop
(a pod's end always updates its Job). While the Job runs, the pass asks the
progress poller (``progress``) to read the running pod's ``/progress``; a
changed report wakes the loop, and the next pass shows it in
``status.progress``. A missing Secret or CA bundle ConfigMap
(``secrets.secret_problem``, ``secrets.ca_bundle_problem``, shared with
InferenceService) is re-checked soon, then less often (``secrets.recheck_seconds``).

Deletion needs no finalizer: the claim and Jobs carry owner references, so the
garbage collector removes them, and nothing blocks when they are already gone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.dynamic.exceptions import DynamicApiError
from pydantic import ValidationError

from lepton_operator import metrics
from lepton_operator.api.dataset import LeptonDatasetSpec
from lepton_operator.api.meta import GROUP, LEPTON_DATASET, VERSION
from lepton_operator.controllers import kube, loop, network, secrets
from lepton_operator.controllers.config import workloads_image
from lepton_operator.controllers.deleted import DELETED
from lepton_operator.controllers.progress import PROGRESS, target_of
from lepton_operator.controllers.reconcile import Logger, Warn, failed_pass
from lepton_operator.controllers.wakeups import ObjectKey
from lepton_operator.render import dataset as render
from lepton_operator.render.common import label_selector, selector_labels
from lepton_operator.status import dataset as dataset_status
from lepton_operator.status import validation
from lepton_operator.status.conditions import VALIDATED

KIND = LEPTON_DATASET.kind
#: While an outdated Job is going away, look again this soon.
STALE_JOB_RECHECK_SECONDS = 2.0
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def _ensure_claim(namespace: str, name: str, uid: str, spec: LeptonDatasetSpec, warn: Warn) -> dict[str, Any]:
    """Create the claim when missing; ask for a larger size when the spec grew it.

    Storage classes without expansion refuse a resize: that is a Warning event,
    not a failed pass, since the data on the claim is still fine.
    """
    desired = render.claim(name, namespace, uid, spec)
    existing = kube.get("v1", "PersistentVolumeClaim", namespace, render.claim_name(name))
    if existing is not None:
        requested = (((existing.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
        if requested == desired["spec"]["resources"]["requests"]["storage"]:
            return existing
    try:
        return kube.apply(desired)
    except DynamicApiError as error:
        if existing is None:
            raise
        summary = error.summary()  # type: ignore[no-untyped-call]
        warn("ClaimResizeRefused", f"claim {render.claim_name(name)} was not resized: {summary}")
        return existing


def _current_job(namespace: str, name: str, uid: str, spec: LeptonDatasetSpec) -> tuple[dict[str, Any] | None, bool]:
    """The Job of the current hash (created when missing) and whether outdated Jobs still exist."""
    wanted = render.job_name(name, spec)
    selector = label_selector(selector_labels(KIND, name, render.PREPARE_ROLE))
    jobs = kube.list_labelled("batch/v1", "Job", namespace, selector)
    stale = [job for job in jobs if job["metadata"]["name"] != wanted]
    for job in stale:
        if not job["metadata"].get("deletionTimestamp"):
            kube.delete("batch/v1", "Job", namespace, job["metadata"]["name"], propagation="Foreground")
    current = next((job for job in jobs if job["metadata"]["name"] == wanted), None)
    if current is None and not stale:
        current = kube.apply(render.prepare_job(name, namespace, uid, spec, image=workloads_image()))
    return current, bool(stale)


def _record_metrics(namespace: str, name: str, uid: str, existing: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    DELETED.record(uid, lambda: _record_live_metrics(namespace, name, existing, new))


def _record_live_metrics(namespace: str, name: str, existing: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    phase, before = new.get("phase"), existing.get("phase")
    metrics.record_dataset_progress(namespace, name, new.get("progress"))
    if phase == "Ready":
        metrics.record_dataset(namespace, name, int(new.get("sizeBytes") or 0), int(new.get("records") or 0))
        if before != "Ready" and new.get("startTime") and new.get("completionTime"):
            started = datetime.fromisoformat(str(new["startTime"]))
            finished = datetime.fromisoformat(str(new["completionTime"]))
            metrics.DATASET_PREPARATION_SECONDS.observe(max(0.0, (finished - started).total_seconds()))
    if phase == "Failed" and before != "Failed":
        prepared: Mapping[str, Any] = next(
            (c for c in new.get("conditions") or [] if c.get("type") == dataset_status.PREPARED), {}
        )
        metrics.DATASET_PREPARATION_FAILURES.labels(reason=prepared.get("reason") or "Unknown").inc()


def reconcile_dataset(
    body: Mapping[str, Any],
    status_patch: MutableMapping[str, Any],
    *,
    retry: int,
    logger: Logger,
    warn: Warn,
    now: datetime | None = None,
) -> float | None:
    """One pass over one LeptonDataset (fits ``loop.Reconciler``)."""
    started = time.perf_counter()
    moment = now or datetime.now(UTC)
    metadata = body.get("metadata") or {}
    namespace, name, uid = str(metadata.get("namespace")), str(metadata.get("name")), str(metadata.get("uid"))
    generation = int(metadata.get("generation") or 0)
    existing = validation.to_plain(body.get("status") or {})
    if metadata.get("deletionTimestamp"):
        return None  # going away: the garbage collector removes the children; create nothing new
    try:
        raw = validation.to_plain(body.get("spec"))
        parsed = validation.parse_spec(KIND, raw)
        if isinstance(parsed, ValidationError):
            new = validation.foundation_status(KIND, generation, raw, parsed, existing, moment)
            if validation.needs_patch(existing, new):
                status_patch.update(new)
                warn(validation.INVALID_SPEC, validation.error_message(parsed, raw))
            metrics.record_reconcile(KIND, "invalid", time.perf_counter() - started)
            return None
        assert isinstance(parsed, LeptonDatasetSpec)
        key = ObjectKey(KIND, namespace, name)
        network.POLICIES.sync(key, uid, generation, parsed)
        source = parsed.source
        problem = secrets.secret_problem(namespace, source.uri, source.secret_ref) or secrets.ca_bundle_problem(
            namespace, source.ca_bundle
        )
        claim = _ensure_claim(namespace, name, uid, parsed, warn)
        job, stale = (None, False) if problem is not None else _current_job(namespace, name, uid, parsed)
        pods: list[dict[str, Any]] = []
        if job is not None:
            pods = kube.list_labelled("v1", "Pod", namespace, f"{JOB_NAME_LABEL}={job['metadata']['name']}")
        new = dataset_status.dataset_status(
            generation, render.claim_name(name), job, pods, problem, existing, moment, claim_object=claim,
            live=PROGRESS.live(key),
        )  # fmt: skip
        reporter = dataset_status.progress_pod(new["phase"], pods)
        PROGRESS.watch(key, None if reporter is None else target_of(reporter))
        if validation.needs_patch(existing, new):
            status_patch.update(new)
            if new["phase"] != existing.get("phase"):
                logger.info(f"phase {existing.get('phase')} -> {new['phase']}")
            if new["phase"] == "Failed" or problem is not None:
                prepared = next(c for c in new["conditions"] if c["type"] == dataset_status.PREPARED)
                warn(prepared["reason"], prepared["message"])
        _record_metrics(namespace, name, uid, existing, new)
    except Exception as error:
        raise failed_pass(KIND, generation, error, existing, status_patch, retry=retry, logger=logger,
                          moment=moment, started=started, warn=warn) from error  # fmt: skip
    metrics.record_reconcile(KIND, "accepted", time.perf_counter() - started)
    if stale:
        return STALE_JOB_RECHECK_SECONDS
    if problem is not None:
        return secrets.recheck_seconds(new, VALIDATED, moment)
    return None


async def forget_deleted(body: Mapping[str, Any], type: str | None, **_: Any) -> None:
    """A deleted dataset's gauges go with it."""
    if type == "DELETED":
        metadata = body.get("metadata") or {}
        DELETED.forget(str(metadata.get("uid") or ""),
                       lambda: metrics.forget_dataset(str(metadata.get("namespace")), str(metadata.get("name"))))


def stopped(key: ObjectKey) -> None:
    """The dataset's loop ended (deleted, or this replica paused): stop polling, sync its policy again if it returns."""
    PROGRESS.forget(key)
    network.POLICIES.forget(key)


loop.register(LEPTON_DATASET, reconcile_dataset, on_stop=stopped,
              on_gone=lambda key: metrics.forget_dataset(key.namespace, key.name))  # fmt: skip
loop.wake_owner_on(LEPTON_DATASET, "batch", "v1", "jobs")
kopf.on.event(GROUP, VERSION, LEPTON_DATASET.plural, id="forget-metrics")(forget_deleted)
