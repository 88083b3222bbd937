"""The HPA-rule baseline that the autoscaling benchmarks compare Lepton's policy with.

Kubernetes' HorizontalPodAutoscaler at its defaults on one metric averaged over
the ready pods (a Pods metric, or an External one with an ``AverageValue``
target, as prometheus-adapter serves Triton's signals):

- a loop every :data:`PERIOD_SECONDS` (``--horizontal-pod-autoscaler-sync-period``);
- ``desired = ceil(ready * value / target)``, no change while ``value / target``
  is within :data:`TOLERANCE` (pods without a metric yet count as using nothing
  when scaling up, so the ready pods carry the whole value);
- scale-up at once (no stabilisation) but limited to max(100 %, 4 pods) per
  period (``behavior.scaleUp`` defaults, ``selectPolicy: Max``);
- scale-down to the highest recommendation of the last
  :data:`DOWN_STABILIZATION_SECONDS` (``behavior.scaleDown`` default);
- an unknown metric changes nothing (the HPA reports an error and holds);
- ``[min_replicas, max_replicas]`` on every recommendation.

It has no notion of capacity in flight: pods that are starting are neither
capacity nor load, so a signal that stays high while they start asks for more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PERIOD_SECONDS = 15.0
TOLERANCE = 0.1
DOWN_STABILIZATION_SECONDS = 300.0


@dataclass
class HpaRule:
    """One HPA's decision and its recommendation history (mutable: one instance per target)."""

    target: float
    min_replicas: int
    max_replicas: int
    down_stabilization_seconds: float = DOWN_STABILIZATION_SECONDS
    history: list[tuple[float, int]] = field(default_factory=list)

    def decide(self, now: float, replicas: int, ready: int, value: float | None) -> int:
        """Replicas to set at ``now`` given the current count, the ready pods and the per-ready-pod value."""
        if value is None or ready == 0:
            return replicas
        ratio = value / self.target
        raw = replicas if abs(ratio - 1.0) <= TOLERANCE else math.ceil(ready * ratio)
        raw = min(max(raw, self.min_replicas), self.max_replicas)
        since = now - self.down_stabilization_seconds
        self.history = [(at, r) for at, r in self.history if at >= since] + [(now, raw)]
        if raw >= replicas:
            return min(raw, max(2 * replicas, replicas + 4))
        return min(replicas, max(r for _, r in self.history))
