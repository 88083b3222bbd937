"""Defaults, derived values and wire format of the API models."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from lepton_operator.api import InferenceServiceSpec, LeptonDatasetSpec, TrainingJobSpec
from lepton_operator.api.quantity import parse_quantity


def test_training_defaults_follow_torchrun() -> None:
    spec = TrainingJobSpec.model_validate({"image": "trainer:1"})
    assert spec.workers.replicas == 1
    assert spec.workers.processes_per_node == 1
    assert not spec.workers.elastic
    assert spec.master_port == 29500
    assert spec.restart_policy.retryable_exit_codes == [130, 137, 143]
    assert spec.run_policy.clean_pod_policy == "Running"


def test_nproc_defaults_to_gpu_count_and_elastic_is_detected() -> None:
    spec = TrainingJobSpec.model_validate(
        {"image": "t", "workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4, "gpu": {"count": 8}}}
    )
    assert spec.workers.processes_per_node == 8
    assert spec.workers.elastic


def test_wire_format_is_camel_case_without_nulls() -> None:
    spec = LeptonDatasetSpec.model_validate({"source": {"uri": "s3://bucket-a/x/"}, "modality": "image"})
    wire = spec.to_wire()
    assert wire["storage"] == {"size": "10Gi", "accessModes": ["ReadWriteOnce"]}
    assert "secretRef" not in wire["source"]
    assert LeptonDatasetSpec.model_validate(wire) == spec


def test_scale_decision_uses_from_and_to_on_the_wire() -> None:
    spec = InferenceServiceSpec.model_validate(
        {"model": {"name": "m", "source": {"claim": {"name": "models", "path": "m"}}}}
    )
    assert spec.replicas == 1
    assert spec.autoscaling is None
    assert spec.model.format == "pytorch_libtorch"


@pytest.mark.parametrize(
    ("text", "value"),
    [("10Gi", Decimal(10 * 2**30)), ("500m", Decimal("0.5")), ("4", Decimal(4)), (3, Decimal(3)), ("1.5G", Decimal(1_500_000_000)), ("1e3", Decimal(1000))],
)
def test_parse_quantity(text: str | int, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["ten gigs", "10GB", "", "Gi"])
def test_parse_quantity_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


@given(st.integers(min_value=1, max_value=2**50), st.sampled_from(["", "Ki", "Mi", "Gi", "k", "M", "G"]))
def test_quantities_round_trip_through_the_model(number: int, suffix: str) -> None:
    """Every positive size round-trips (0 is refused: tests/data/invalid_objects.yaml, dataset-size-zero)."""
    size = f"{number}{suffix}"
    spec = LeptonDatasetSpec.model_validate(
        {"source": {"uri": "s3://bucket-a/x/"}, "modality": "text", "storage": {"size": size}}
    )
    assert spec.storage.size == size
    assert parse_quantity(size) > 0


def test_booleans_are_not_quantities() -> None:
    with pytest.raises(ValidationError):
        LeptonDatasetSpec.model_validate(
            {"source": {"uri": "s3://bucket-a/x/"}, "modality": "text", "storage": {"size": True}}
        )
