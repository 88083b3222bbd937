"""The operator's Prometheus metrics: one registry, served on ``/metrics``.

Everything the operator exports lives in :data:`REGISTRY`, a registry of its
own rather than prometheus-client's global one, so tests can read it without
the process collectors and nothing imported by accident ends up exported.

Naming: ``lepton_<area>_<what>_<unit>``. The areas are ``reconcile`` (all
kinds, labelled by ``kind``) now; the per-kind signals of DESIGN.md section 4
come with the issues that compute them, as ``lepton_inference_*``,
``lepton_training_*`` and ``lepton_dataset_*``. A metric is declared here only
when something sets it.

The ``kind`` label takes the three Lepton kinds and ``outcome`` a fixed set of
values, and their series are created up front: the label sets are small and
bounded, and a series that exists at zero makes ``rate()`` and absence alerts
behave from the first scrape.
"""

from __future__ import annotations

from typing import Final, Literal

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


def record_dataset(namespace: str, name: str, size_bytes: int, records: int) -> None:
    """Export the numbers of a Ready dataset."""
    DATASET_BYTES.labels(namespace=namespace, dataset=name).set(size_bytes)
    DATASET_RECORDS.labels(namespace=namespace, dataset=name).set(records)


def forget_dataset(namespace: str, name: str) -> None:
    """Drop the series of a deleted dataset (absent, not a stale last value)."""
    for gauge in (DATASET_BYTES, DATASET_RECORDS):
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from other pods
    """Serve :data:`REGISTRY` on ``http://<address>:<port>/metrics`` from a daemon thread.

    Binding happens here, synchronously, so a port already in use fails the
    operator at start instead of leaving it running without metrics.
    """
    start_http_server(port, addr=address, registry=REGISTRY)
