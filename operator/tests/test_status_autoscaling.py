"""The ScalingActive condition: what it says while the signal is known and while it is not, and when it is written."""

from __future__ import annotations

from lepton_operator.status import autoscaling
from lepton_operator.status.conditions import to_wire

NOW = "2026-01-02T03:04:05Z"
READY = {"type": "Ready", "status": "True", "reason": "ModelReady", "message": "1/1", "observedGeneration": 2,
         "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip


def test_unknown_holds_with_the_count_and_why_known_names_the_decision() -> None:
    held = autoscaling.scaling_active("SignalUnknown", "Prometheus failed: refused", 1, 2)
    assert (held.status, held.reason, held.observed_generation) == ("False", "SignalUnknown", 2)
    assert held.message == "holding 1 replica: the signal is unknown (Prometheus failed: refused)"
    active = autoscaling.scaling_active("AboveTarget", None, 3, 2)
    assert (active.status, active.reason) == ("True", "AboveTarget")
    assert active.message == "scaling on the signal; last decision: AboveTarget"


def test_merged_keeps_the_other_conditions_and_writes_only_a_change() -> None:
    held = autoscaling.scaling_active("SignalUnknown", "no sample", 2, 2)
    first = autoscaling.merged([READY], held, NOW)
    assert first is not None and first[0] == READY
    assert first[1] == {**to_wire([held])[0], "lastTransitionTime": NOW}
    assert autoscaling.merged(first, held, "2026-01-02T03:05:00Z") is None  # the same: no write
    other_reason = autoscaling.scaling_active("SignalUnknown", "Prometheus failed: timed out", 2, 2)
    second = autoscaling.merged(first, other_reason, "2026-01-02T03:05:00Z")
    assert second is not None and second[1]["lastTransitionTime"] == NOW  # still False since the first
    recovered = autoscaling.merged(second, autoscaling.scaling_active("WithinTolerance", None, 2, 2), "2026-01-02T03:06:00Z")
    assert recovered is not None and recovered[1]["status"] == "True"
    assert recovered[1]["lastTransitionTime"] == "2026-01-02T03:06:00Z"
    assert autoscaling.merged(None, held, NOW) == [{**to_wire([held])[0], "lastTransitionTime": NOW}]
