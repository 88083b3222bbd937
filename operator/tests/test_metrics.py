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
    names = {family.name for family in families}
    assert {"lepton_reconcile_seconds", "lepton_reconcile", "lepton_objects"} <= names
    assert all(name.startswith("lepton_") for name in names)
    text = generate_latest(metrics.REGISTRY).decode()
    for kind in KINDS:
        assert f'lepton_reconcile_seconds_bucket{{kind="{kind}",le="0.005"}}' in text
    assert "process_cpu_seconds_total" not in text  # not the global registry


def test_inference_autoscaling_series_are_per_service_and_forgotten() -> None:
    metrics.record_scale("ns", "svc", "rps", 3.5, 4, 2, 3, "up", "AboveTarget")
    labels = {"namespace": "ns", "name": "svc"}
    assert metrics.REGISTRY.get_sample_value("lepton_inference_signal_value", {**labels, "signal": "rps"}) == 3.5
    assert metrics.REGISTRY.get_sample_value("lepton_inference_replicas", {**labels, "state": "starting"}) == 1
    metrics.record_scale("ns", "svc", "rps", None, 4, 3, 3, "none", "SignalUnknown")
    assert metrics.REGISTRY.get_sample_value("lepton_inference_signal_value", {**labels, "signal": "rps"}) is None
    metrics.forget_service("ns", "svc")
    assert metrics.REGISTRY.get_sample_value("lepton_inference_desired_replicas", labels) is None


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


def test_summed_gauge_replaces_each_objects_share_and_drops_it_when_gone() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    from lepton_operator.metrics import SummedGauge

    registry = CollectorRegistry()
    summed = SummedGauge(Gauge("things", "t", labelnames=("phase",), registry=registry))
    summed.set("a", {("Ready",): 1})
    summed.set("b", {("Ready",): 1})
    assert registry.get_sample_value("things", {"phase": "Ready"}) == 2
    summed.set("a", {("Failed",): 1})  # a moved: its old share goes
    assert registry.get_sample_value("things", {"phase": "Ready"}) == 1
    assert registry.get_sample_value("things", {"phase": "Failed"}) == 1
    summed.set("b", None)
    summed.set("a", None)
    assert registry.get_sample_value("things", {"phase": "Ready"}) == 0
    assert registry.get_sample_value("things", {"phase": "Failed"}) == 0


def test_loop_phases_are_counted_by_kind() -> None:
    from lepton_operator import metrics

    metrics.record_phase("TrainingJob", "ns", "a", "Running")
    metrics.record_phase("TrainingJob", "ns", "b", "Running")
    assert metrics.REGISTRY.get_sample_value("lepton_objects", {"kind": "TrainingJob", "phase": "Running"}) == 2
    metrics.record_phase("TrainingJob", "ns", "a", None)
    metrics.record_phase("TrainingJob", "ns", "b", None)
    assert metrics.REGISTRY.get_sample_value("lepton_objects", {"kind": "TrainingJob", "phase": "Running"}) == 0


def test_training_worker_gauge_sums_jobs_and_forgets_deleted_ones() -> None:
    def workers(state: str) -> float:
        return metrics.REGISTRY.get_sample_value("lepton_training_workers", {"state": state}) or 0.0

    base = workers("ready")
    metrics.record_training_workers("ns", "a", {"desired": 4, "ready": 3})
    metrics.record_training_workers("ns", "b", {"desired": 2, "ready": 2})
    assert workers("ready") == base + 5
    metrics.record_training_workers("ns", "a", None)
    assert workers("ready") == base + 2
    metrics.record_training_workers("ns", "b", None)
    assert workers("ready") == base


def test_training_restarts_count_what_status_adds_once_from_the_first_sight() -> None:
    def resized() -> float:
        return metrics.REGISTRY.get_sample_value("lepton_training_restarts_total", {"reason": "Resized"}) or 0.0

    before = resized()
    metrics.record_training_restarts("ns", "grown", {"Resized": 3})  # first sight: made by another process
    assert resized() == before
    metrics.record_training_restarts("ns", "grown", {"Resized": 5})
    metrics.record_training_restarts("ns", "grown", {"Resized": 5})  # read again: nothing new
    assert resized() == before + 2
    metrics.record_training_restarts("ns", "grown", None)  # deleted
    metrics.record_training_restarts("ns", "grown", {})  # a new job of that name
    metrics.record_training_restarts("ns", "grown", {"Resized": 1})
    assert resized() == before + 3
