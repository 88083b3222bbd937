"""The operator's metrics: one registry, lepton_* names, series present from the start."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client import generate_latest

from lepton_operator import metrics
from lepton_operator.api import RESOURCES

KINDS = [info.kind for info in RESOURCES]


def count(kind: str, outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value("lepton_reconcile_total", {"kind": kind, "outcome": outcome})
    assert value is not None
    return value


def observations(kind: str) -> float:
    value = metrics.REGISTRY.get_sample_value("lepton_reconcile_seconds_count", {"kind": kind})
    assert value is not None
    return value


def test_every_kind_and_outcome_has_series_before_any_reconcile() -> None:
    for kind in KINDS:
        assert observations(kind) >= 0
        for outcome in metrics.OUTCOMES:
            assert count(kind, outcome) >= 0


def test_record_reconcile_counts_and_times() -> None:
    before = (count("TrainingJob", "invalid"), observations("TrainingJob"))
    seconds_before = metrics.REGISTRY.get_sample_value("lepton_reconcile_seconds_sum", {"kind": "TrainingJob"}) or 0.0
    metrics.record_reconcile("TrainingJob", "invalid", 0.042)
    assert count("TrainingJob", "invalid") == before[0] + 1
    assert observations("TrainingJob") == before[1] + 1
    seconds = metrics.REGISTRY.get_sample_value("lepton_reconcile_seconds_sum", {"kind": "TrainingJob"})
    assert seconds is not None and abs(seconds - seconds_before - 0.042) < 1e-9
    bucket = metrics.REGISTRY.get_sample_value("lepton_reconcile_seconds_bucket", {"kind": "TrainingJob", "le": "0.05"})
    assert bucket is not None and bucket >= 1


def test_only_lepton_metrics_are_exported() -> None:
    families = list(metrics.REGISTRY.collect())
    assert {family.name for family in families} == {
        "lepton_reconcile_seconds", "lepton_reconcile", "lepton_dataset_bytes", "lepton_dataset_records",
        "lepton_dataset_preparation_seconds", "lepton_dataset_preparation_failures",
    }  # fmt: skip
    text = generate_latest(metrics.REGISTRY).decode()
    for kind in KINDS:
        assert f'lepton_reconcile_seconds_bucket{{kind="{kind}",le="0.005"}}' in text
    assert "process_cpu_seconds_total" not in text  # not the global registry


def test_serve_exposes_the_registry_over_http() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    metrics.serve(port, address="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        body = response.read().decode()
    assert "# TYPE lepton_reconcile_seconds histogram" in body
    assert "# TYPE lepton_reconcile_total counter" in body
    assert "_created" not in body
