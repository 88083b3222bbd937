"""The operator's Prometheus metrics: one registry, served on ``/metrics``.

Everything the operator exports lives in :data:`REGISTRY`, a registry of its
own rather than prometheus-client's global one, so tests can read it without
the process collectors and nothing imported by accident ends up exported.

Naming: ``lepton_<area>_<what>_<unit>``. The areas are ``reconcile`` and
``objects`` (all kinds, labelled by ``kind``); the per-kind signals of DESIGN.md section 4
come with the issues that compute them, as ``lepton_inference_*``,
``lepton_training_*`` and ``lepton_dataset_*``. A metric is declared here only
when something sets it.

The ``kind`` label takes the three Lepton kinds and ``outcome`` a fixed set of
values, and their series are created up front: the label sets are small and
bounded, and a series that exists at zero makes ``rate()`` and absence alerts
behave from the first scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping
from typing import Any, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from lepton_operator.api.meta import RESOURCES

# The ``*_created`` series double the series count for a feature Prometheus does
# not use by default; this process exports nothing but the operator's metrics.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY: Final = CollectorRegistry(auto_describe=True)

KINDS: Final = tuple(info.kind for info in RESOURCES)

Outcome = Literal["accepted", "invalid", "error"]
#: ``accepted``: the spec parsed and status was written; ``invalid``: the spec
#: failed validation and the object is Stalled; ``error``: an unexpected
#: exception, retried by kopf with backoff.
OUTCOMES: Final[tuple[Outcome, ...]] = ("accepted", "invalid", "error")

RECONCILE_SECONDS: Final = Histogram(
    "lepton_reconcile_seconds",
    "Time spent in one reconcile of a Lepton object, by kind.",
    labelnames=("kind",),
    # A reconcile is a few API calls: milliseconds normally, seconds when the
    # API server is slow, capped by the 20 s request timeout.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)

RECONCILE_TOTAL: Final = Counter(
    "lepton_reconcile",
    "Reconciles of Lepton objects, by kind and outcome (accepted, invalid, error).",
    labelnames=("kind", "outcome"),
    registry=REGISTRY,
)

for _kind in KINDS:
    RECONCILE_SECONDS.labels(kind=_kind)
    for _outcome in OUTCOMES:
        RECONCILE_TOTAL.labels(kind=_kind, outcome=_outcome)


def record_reconcile(kind: str, outcome: Outcome, seconds: float) -> None:
    """Count one reconcile of ``kind`` and record how long it took."""
    RECONCILE_SECONDS.labels(kind=kind).observe(seconds)
    RECONCILE_TOTAL.labels(kind=kind, outcome=outcome).inc()


class SummedGauge:
    """A gauge whose series are sums over objects, each object's share replaced whole.

    Reconcilers know one object at a time ("this job has 3 ready workers", "this
    dataset is Ready"); dashboards want totals by label. Each call replaces one
    object's contribution (``None`` removes it, e.g. when its loop ends) and the
    affected series are recomputed, so a deleted object never leaves a stale
    count behind. Series that drop to zero stay, at zero, as counts should.
    """

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._lock = threading.Lock()
        self._shares: dict[Hashable, Mapping[tuple[str, ...], float]] = {}

    def set(self, owner: Hashable, share: Mapping[tuple[str, ...], float] | None) -> None:
        """Replace ``owner``'s share: label values (in the gauge's label order) -> value."""
        with self._lock:
            touched = set(self._shares.get(owner, {}))
            if share is None:
                self._shares.pop(owner, None)
            else:
                self._shares[owner] = dict(share)
                touched |= set(share)
            for labels in touched:
                total = sum(shares.get(labels, 0.0) for shares in self._shares.values())
                self.gauge.labels(*labels).set(total)


OBJECTS: Final = SummedGauge(
    Gauge(
        "lepton_objects",
        "Lepton objects this operator reconciles, by kind and phase.",
        labelnames=("kind", "phase"),
        registry=REGISTRY,
    )
)


def record_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """Count one object in its current phase (``None``: it is no longer reconciled here)."""
    OBJECTS.set((kind, namespace, name), None if phase is None else {(kind, phase): 1.0})


#: ``schedulable``: workers the cluster can host now, for elastic jobs (what their size follows).
TRAINING_WORKER_STATES: Final = ("desired", "schedulable", "active", "ready", "succeeded", "failed")
TRAINING_RESTART_REASONS: Final = ("RetryableExitCode", "OOMKilled", "NodeLost", "Preempted", "Resized")

TRAINING_WORKERS: Final = Gauge(
    "lepton_training_workers",
    "TrainingJob worker pods of all jobs, by state (desired, schedulable, active, ready, succeeded, failed).",
    labelnames=("state",),
    registry=REGISTRY,
)

TRAINING_RESTARTS: Final = Counter(
    "lepton_training_restarts",
    "TrainingJob group restarts, by reason.",
    labelnames=("reason",),
    registry=REGISTRY,
)

for _state in TRAINING_WORKER_STATES:
    TRAINING_WORKERS.labels(state=_state)
for _reason in TRAINING_RESTART_REASONS:
    TRAINING_RESTARTS.labels(reason=_reason)

_TRAINING_WORKERS_BY_JOB: Final = SummedGauge(TRAINING_WORKERS)


def record_training_workers(namespace: str, name: str, counts: Mapping[str, int] | None) -> None:
    """Set one job's worker counts (``None`` when the job is gone); the gauge is the sum over jobs."""
    share: dict[tuple[str, ...], float] | None = None
    if counts is not None:
        share = {(state,): float(counts.get(state, 0)) for state in TRAINING_WORKER_STATES}
    _TRAINING_WORKERS_BY_JOB.set((namespace, name), share)


#: Per job, the ``status.restarts.byReason`` this process has counted up to.
_RESTARTS_COUNTED: Final[dict[tuple[str, str], dict[str, int]]] = {}


def record_training_restarts(namespace: str, name: str, by_reason: Mapping[str, int] | None) -> None:
    """Count a job's group restarts from its ``status.restarts.byReason`` (``None``: the job is gone).

    The counter follows the status (a restart is written there before it
    happens) instead of the pass that decided it: a status write that timed
    out on the client but landed on the server is counted when the next pass
    reads it back, and never twice. The first sight of a job only sets where
    counting starts (restarts before it were made by another process, whose
    counter had them).
    """
    key = (namespace, name)
    if by_reason is None:
        _RESTARTS_COUNTED.pop(key, None)
        return
    seen = _RESTARTS_COUNTED.get(key)
    if seen is not None:
        for reason, count in by_reason.items():
            if count > seen.get(reason, 0):
                TRAINING_RESTARTS.labels(reason=reason).inc(count - seen.get(reason, 0))
    _RESTARTS_COUNTED[key] = dict(by_reason)  # lower only for a new job of the same name


TRAINING_PROGRESS_STEP: Final = Gauge(
    "lepton_training_progress_step",
    "The optimizer step a TrainingJob's trainer last reported (status.progress.step), live while it runs.",
    labelnames=("namespace", "name"),
    registry=REGISTRY,
)


def record_training_progress(namespace: str, name: str, progress: Mapping[str, Any] | None) -> None:
    """Export a job's ``status.progress`` step; absent when the job is gone or nothing was reported."""
    step = (progress or {}).get("step")
    if isinstance(step, int):
        TRAINING_PROGRESS_STEP.labels(namespace, name).set(step)
    else:
        _remove(TRAINING_PROGRESS_STEP, namespace, name)


def _remove(gauge: Gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass


# InferenceService autoscaling, one series per service (namespace, name); a
# service's series are removed when it stops being autoscaled.
SERVICE_LABELS: Final = ("namespace", "name")
INFERENCE_SIGNAL: Final = Gauge(
    "lepton_inference_signal_value",
    "The autoscaling signal per replica (per request for queueTimeMicros) the autoscaler last read; absent when unknown.",
    labelnames=(*SERVICE_LABELS, "signal"),
    registry=REGISTRY,
)
INFERENCE_TARGET: Final = Gauge(
    "lepton_inference_signal_target",
    "The target of the autoscaling signal per replica (per request for queueTimeMicros).",
    labelnames=(*SERVICE_LABELS, "signal"),
    registry=REGISTRY,
)
INFERENCE_DESIRED: Final = Gauge(
    "lepton_inference_desired_replicas",
    "Replicas the autoscaler last decided on.",
    labelnames=SERVICE_LABELS,
    registry=REGISTRY,
)
INFERENCE_REPLICAS: Final = Gauge(
    "lepton_inference_replicas",
    "Replicas of the service's Deployment, by readiness (ready, starting).",
    labelnames=(*SERVICE_LABELS, "state"),
    registry=REGISTRY,
)
SCALE_DECISIONS: Final = Counter(
    "lepton_inference_scale_decisions",
    "Autoscaler decisions, by direction (up, down, none) and reason (AboveTarget, Idle, SignalUnknown, ...).",
    labelnames=("direction", "reason"),
    registry=REGISTRY,
)


def record_scale(
    namespace: str, name: str, signal: str, value: float | None, desired: int, ready: int, replicas: int,
    direction: str, reason: str, target: float | None = None,
) -> None:
    """Export one autoscaling decision of one service."""
    if target is not None:
        INFERENCE_TARGET.labels(namespace, name, signal).set(target)
    if value is None:
        try:
            INFERENCE_SIGNAL.remove(namespace, name, signal)
        except KeyError:
            pass
    else:
        INFERENCE_SIGNAL.labels(namespace, name, signal).set(value)
    INFERENCE_DESIRED.labels(namespace, name).set(desired)
    INFERENCE_REPLICAS.labels(namespace, name, "ready").set(ready)
    INFERENCE_REPLICAS.labels(namespace, name, "starting").set(max(0, replicas - ready))
    SCALE_DECISIONS.labels(direction, reason).inc()


def forget_service(namespace: str, name: str) -> None:
    """Drop a service's autoscaling series (it was deleted or is no longer autoscaled)."""
    for gauge in (INFERENCE_SIGNAL, INFERENCE_TARGET, INFERENCE_DESIRED, INFERENCE_REPLICAS):
        for labels in [key for key in gauge._metrics if key[:2] == (namespace, name)]:  # noqa: SLF001
            gauge.remove(*labels)


DATASET_BYTES: Final = Gauge(
    "lepton_dataset_bytes",
    "Bytes of a Ready dataset's prepared shards.",
    labelnames=("namespace", "dataset"),
    registry=REGISTRY,
)

DATASET_RECORDS: Final = Gauge(
    "lepton_dataset_records",
    "Records in a Ready dataset.",
    labelnames=("namespace", "dataset"),
    registry=REGISTRY,
)

DATASET_PREPARATION_SECONDS: Final = Histogram(
    "lepton_dataset_preparation_seconds",
    "From the prepare Job's start to its completion, per successful preparation.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
    registry=REGISTRY,
)

DATASET_PREPARATION_FAILURES: Final = Counter(
    "lepton_dataset_preparation_failures",
    "Preparations that ended Failed, by reason (ChecksumMismatch, SourceUnreachable, BackoffLimitExceeded...).",
    labelnames=("reason",),
    registry=REGISTRY,
)


DATASET_PROGRESS_BYTES: Final = Gauge(
    "lepton_dataset_progress_bytes",
    "Source bytes of a preparation: done so far and total (when the source says), live while the Job runs.",
    labelnames=("namespace", "dataset", "state"),
    registry=REGISTRY,
)


def record_dataset(namespace: str, name: str, size_bytes: int, records: int) -> None:
    """Export the numbers of a Ready dataset."""
    DATASET_BYTES.labels(namespace=namespace, dataset=name).set(size_bytes)
    DATASET_RECORDS.labels(namespace=namespace, dataset=name).set(records)


def record_dataset_progress(namespace: str, name: str, progress: Mapping[str, Any] | None) -> None:
    """Export a dataset's ``status.progress`` (``state`` done / total); absent where unknown."""
    for state, key in (("done", "bytesDone"), ("total", "bytesTotal")):
        value = (progress or {}).get(key)
        if isinstance(value, int):
            DATASET_PROGRESS_BYTES.labels(namespace, name, state).set(value)
        else:
            _remove(DATASET_PROGRESS_BYTES, namespace, name, state)


def forget_dataset(namespace: str, name: str) -> None:
    """Drop the series of a deleted dataset (absent, not a stale last value)."""
    for gauge in (DATASET_BYTES, DATASET_RECORDS):
        _remove(gauge, namespace, name)
    record_dataset_progress(namespace, name, None)


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from other pods
    """Serve :data:`REGISTRY` on ``http://<address>:<port>/metrics`` from a daemon thread.

    Binding happens here, synchronously, so a port already in use fails the
    operator at start instead of leaving it running without metrics.
    """
    start_http_server(port, addr=address, registry=REGISTRY)
