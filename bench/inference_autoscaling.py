"""Lepton's autoscaling policy versus an HPA-style baseline on the same simulated traces.

``python bench/inference_autoscaling.py`` (PYTHONPATH=operator; ``bench/`` is on the path as the script's directory). Not a test:
it prints figures, as ratios measured in the same run.

The service is a fluid model of Triton replicas: requests arrive at
``rate(t)``, each Ready replica completes ``1 / service_time`` per second, the
backlog is everything in the servers (queued + executing), which is exactly
what Little's-law concurrency (``rate(nv_inference_request_duration_us) / 1e6``)
measures: the queue plus the requests executing. New replicas become Ready ``startup`` seconds after they are asked for.

Both controllers read the same signal (concurrency per Ready replica, target
``TARGET``) with the same freshness. Only the decision differs:

- **lepton**: ``scaling.policy.decide`` every 5 s, scale-down stabilisation 60 s;
- **hpa**: Kubernetes' HPA at its defaults (``hpa_rule``, shared with the live
  benchmark): a 15 s loop, ``ceil(ready * value / target)`` with tolerance 0.1,
  scale-up limited to max(100 %, 4 pods) per 15 s, scale-down stabilisation
  300 s, no notion of capacity in flight.

Figures per trace: seconds from the step to the first decision and to enough
capacity Ready, peak replicas (overshoot), direction changes, replica-minutes,
and seconds over the latency objective.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from hpa_rule import PERIOD_SECONDS, HpaRule
from lepton_operator.scaling.policy import Observation, PolicyConfig, PolicyState, decide

SERVICE_TIME = 0.1
TARGET = 0.7
STARTUP = 20.0
DT = 0.1
LATENCY_OBJECTIVE = 0.5
MAX_REPLICAS = 20


@dataclass
class Run:
    first_decision: float | None = None
    capacity_ready: float | None = None
    peak: int = 0
    direction_changes: int = 0
    replica_seconds: float = 0.0
    over_objective: float = 0.0


Controller = Callable[[float, int, int, float | None], int]


def lepton_controller() -> tuple[float, Controller]:
    config = PolicyConfig(1, MAX_REPLICAS, TARGET, scale_down_stabilization_seconds=60)
    state = [PolicyState()]

    def step(now: float, replicas: int, ready: int, value: float | None) -> int:
        decision = decide(config, Observation(now, replicas, ready, value, None, True), state[0])
        state[0] = decision.state
        return decision.desired

    return 5.0, step


def hpa_controller() -> tuple[float, Controller]:
    return PERIOD_SECONDS, HpaRule(TARGET, 1, MAX_REPLICAS).decide


def simulate(rate: Callable[[float], float], seconds: float, make: Callable[[], tuple[float, Controller]],
             step_at: float, needed_after_step: int) -> Run:  # fmt: skip
    interval, controller = make()
    run, replicas, born = Run(), 1, [-STARTUP]
    backlog, next_decision, last_direction = 0.0, 0.0, 0
    window: list[float] = []
    now = 0.0
    while now < seconds:
        ready = sum(1 for t in born if now - t >= STARTUP)
        backlog = max(0.0, backlog + rate(now) * DT - ready / SERVICE_TIME * DT)  # queued
        in_server = backlog + min(rate(now), ready / SERVICE_TIME) * SERVICE_TIME  # queued + executing
        window = (window + [in_server])[-int(10 / DT):]  # a 10 s rate window
        if now >= next_decision:
            value = sum(window) / len(window) / ready if ready else None
            desired = controller(now, replicas, ready, value)
            if desired != replicas:
                direction = 1 if desired > replicas else -1
                if last_direction and direction != last_direction:
                    run.direction_changes += 1
                last_direction = direction
                if now >= step_at and run.first_decision is None and direction > 0:
                    run.first_decision = now - step_at
                born = born + [now] * (desired - replicas) if desired > replicas else sorted(born)[:desired]
                replicas = desired
            next_decision += interval
        if now >= step_at and run.capacity_ready is None and ready >= needed_after_step:
            run.capacity_ready = now - step_at
        throughput = max(ready / SERVICE_TIME, 1e-9)
        if backlog / throughput + SERVICE_TIME > LATENCY_OBJECTIVE:
            run.over_objective += DT
        run.peak = max(run.peak, replicas)
        run.replica_seconds += replicas * DT
        now += DT
    return run


def step_trace(t: float) -> float:
    return 5.0 if t < 60 or t >= 360 else 60.0


def noisy_trace(seed: int) -> Callable[[float], float]:
    noise = random.Random(seed)
    levels = [30.0 * (1 + noise.uniform(-0.3, 0.3)) for _ in range(2000)]
    return lambda t: levels[int(t / 5) % len(levels)]


def report(name: str, ours: Run, base: Run) -> None:
    def ratio(a: float | None, b: float | None) -> str:
        return "n/a" if a is None or not b else f"{a / b:.2f}"

    print(f"\n{name}: lepton vs hpa (ratio lepton/hpa)")
    rows = [
        ("step -> decision s", ours.first_decision, base.first_decision),
        ("step -> capacity Ready s", ours.capacity_ready, base.capacity_ready),
        ("peak replicas", ours.peak, base.peak),
        ("direction changes", ours.direction_changes, base.direction_changes),
        ("replica-minutes", ours.replica_seconds / 60, base.replica_seconds / 60),
        ("s over latency objective", ours.over_objective, base.over_objective),
    ]
    for label, a, b in rows:
        shown_a = "n/a" if a is None else f"{a:.1f}"
        shown_b = "n/a" if b is None else f"{b:.1f}"
        print(f"  {label:26} {shown_a:>8} {shown_b:>8}   {ratio(a, b)}")


def main() -> None:
    needed = math.ceil(60.0 * SERVICE_TIME / TARGET)
    print(f"service time {SERVICE_TIME * 1000:.0f} ms, target {TARGET} in server per replica, startup {STARTUP:.0f} s,"
          f" step 5 -> 60 req/s at 60 s and back at 360 s ({needed} replicas needed)")  # fmt: skip
    report("load step", simulate(step_trace, 900, lepton_controller, 60, needed),
           simulate(step_trace, 900, hpa_controller, 60, needed))  # fmt: skip
    noisy = noisy_trace(7)
    report("noisy steady (30 req/s +-30 %)", simulate(noisy, 1800, lepton_controller, 0, 1),
           simulate(noisy, 1800, hpa_controller, 0, 1))  # fmt: skip


if __name__ == "__main__":
    main()
