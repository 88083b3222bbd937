"""The autoscaling policy on replayed load traces: reaction, stability, zero, unknown data, bounds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from lepton_operator.api.inference import AutoscalingSpec
from lepton_operator.scaling import policy
from lepton_operator.scaling.policy import Decision, Observation, PolicyConfig, PolicyState, decide

LOOP = 5.0
#: load(t) -> (total signal across replicas or None when the metric is missing, requests arrived?)
Trace = Callable[[float], tuple[float | None, bool]]


@dataclass
class Step:
    now: float
    replicas: int
    ready: int
    decision: Decision


def replay(config: PolicyConfig, trace: Trace, seconds: float, *, start: int = 1, startup: float = 20.0) -> list[Step]:
    """Run the policy every LOOP seconds; new replicas become ready ``startup`` seconds after they are asked for."""
    replicas, state = start, PolicyState()
    born: list[float] = [-startup] * start
    steps: list[Step] = []
    now = 0.0
    while now <= seconds:
        ready = sum(1 for t in born if now - t >= startup)
        total, active = trace(now)
        value = None if total is None or ready == 0 else total / ready
        demand = None if total is None else total
        decision = decide(config, Observation(now, replicas, ready, value, demand, active), state)
        state = decision.state
        steps.append(Step(now, replicas, ready, decision))
        if decision.desired > replicas:
            born += [now] * (decision.desired - replicas)
        else:
            born = sorted(born)[: decision.desired]
        replicas = decision.desired
        now += LOOP
    return steps


def direction_changes(steps: list[Step]) -> int:
    moves = [s.decision.direction for s in steps if s.decision.direction != "none"]
    return sum(1 for a, b in zip(moves, moves[1:], strict=False) if a != b)


def config(**overrides: float | int | None) -> PolicyConfig:
    values: dict[str, float | int | None] = {"min_replicas": 1, "max_replicas": 20, "target": 2.0}
    values.update(overrides)
    return PolicyConfig(**values)  # type: ignore[arg-type]


def test_step_up_is_decided_within_one_loop() -> None:
    steps = replay(config(), lambda t: (2.0 if t < 60 else 20.0, True), 120)
    first_after_step = next(s for s in steps if s.now >= 60)
    assert first_after_step.decision.desired == 10
    assert first_after_step.decision.reason == policy.ABOVE_TARGET
    assert first_after_step.decision.direction == "up"


def test_starting_replicas_count_as_capacity_no_overshoot() -> None:
    steps = replay(config(), lambda t: (2.0 if t < 60 else 20.0, True), 200, startup=40.0)
    assert max(s.decision.desired for s in steps) == 10
    while_starting = [s for s in steps if 60 < s.now < 100]
    assert while_starting and all(s.decision.reason == policy.CAPACITY_IN_FLIGHT for s in while_starting)
    assert all(s.decision.desired == 10 for s in while_starting)


def test_spike_scales_up_at_once_and_down_only_after_the_window() -> None:
    cfg = config(scale_down_stabilization_seconds=120)
    steps = replay(cfg, lambda t: (20.0 if 60 <= t < 65 else 2.0, True), 400, startup=0.0)
    up = next(s for s in steps if s.decision.direction == "up")
    assert up.now == 60 and up.decision.desired == 10
    down = next(s for s in steps if s.decision.direction == "down")
    assert down.now >= 60 + 120
    assert steps[-1].decision.desired == 1
    assert direction_changes(steps) == 1


def test_noisy_steady_load_does_not_flap() -> None:
    noise = [0.0, 0.3, -0.25, 0.15, -0.3, 0.2, -0.1, 0.28, -0.2, 0.05]

    def trace(t: float) -> tuple[float, bool]:
        return 10.0 * (1 + noise[int(t / LOOP) % len(noise)]), True

    steps = replay(config(), trace, 1800, start=5, startup=10.0)
    settled = steps[2:]
    assert direction_changes(settled) <= 1
    assert len({s.decision.desired for s in steps[-40:]}) == 1


def test_idle_scales_to_zero_after_the_period_and_back_on_demand() -> None:
    cfg = config(min_replicas=0, scale_to_zero_after_seconds=60)

    def trace(t: float) -> tuple[float, bool]:
        if t < 30:
            return 4.0, True
        if t < 300:
            return 0.0, False
        return 3.0, True

    steps = replay(cfg, trace, 320, start=2, startup=0.0)
    zero = next(s for s in steps if s.decision.desired == 0)
    assert zero.decision.reason == policy.IDLE
    last_busy_loop = 25.0
    assert zero.now == last_busy_loop + 60
    back = next(s for s in steps if s.now >= 300)
    assert back.decision.desired == 1 and back.decision.reason == policy.PENDING_DEMAND


def test_idle_without_scale_to_zero_stays_at_min() -> None:
    steps = replay(config(), lambda t: (0.0, False), 600, start=3, startup=0.0)
    assert min(s.decision.desired for s in steps) == 1
    assert steps[-1].decision.desired == 1


def test_missing_data_holds_never_zero() -> None:
    cfg = config(min_replicas=0, scale_to_zero_after_seconds=10, scale_down_stabilization_seconds=0)
    steps = replay(cfg, lambda t: (None, None), 300, start=4, startup=0.0)  # type: ignore[arg-type,return-value]
    assert all(s.decision.desired == 4 and s.decision.reason == policy.SIGNAL_UNKNOWN for s in steps)
    assert all(s.decision.state.history == () for s in steps)


def test_missing_data_mid_trace_holds_then_resumes() -> None:
    def trace(t: float) -> tuple[float | None, bool]:
        if t < 50:
            return 10.0, True
        if t < 100:
            return None, True
        return 20.0, True

    steps = replay(config(), trace, 110, startup=0.0)
    during = [s for s in steps if 50 <= s.now < 100]
    assert all(s.decision.desired == 5 and s.decision.reason == policy.SIGNAL_UNKNOWN for s in during)
    assert steps[-1].decision.desired == 10


def test_unknown_at_zero_stays_at_zero() -> None:
    cfg = config(min_replicas=0, scale_to_zero_after_seconds=10)
    decision = decide(cfg, Observation(0.0, 0, 0, None, None, None))
    assert (decision.desired, decision.reason, decision.direction) == (0, policy.SIGNAL_UNKNOWN, "none")


def test_within_tolerance_holds() -> None:
    decision = decide(config(), Observation(0.0, 4, 4, 2.15, 8.6, True))
    assert (decision.desired, decision.reason) == (4, policy.WITHIN_TOLERANCE)


def test_scale_up_stabilisation_takes_the_lowest_recent_recommendation() -> None:
    cfg = config(scale_up_stabilization_seconds=30)
    state = decide(cfg, Observation(0.0, 2, 2, 2.0, 4.0, True)).state
    decision = decide(cfg, Observation(10.0, 2, 2, 8.0, 16.0, True), state)
    assert (decision.desired, decision.reason) == (2, policy.STABILIZING)
    later = decide(cfg, Observation(35.0, 2, 2, 8.0, 16.0, True), decision.state)
    assert later.desired == 8


def test_bounds_are_reported() -> None:
    assert decide(config(max_replicas=4), Observation(0.0, 2, 2, 20.0, 40.0, True)).reason == policy.ABOVE_MAX
    assert decide(config(min_replicas=3), Observation(0.0, 1, 1, 2.0, 2.0, True)).reason == policy.BELOW_MIN


def test_config_from_spec() -> None:
    spec = AutoscalingSpec.model_validate({"minReplicas": 0, "maxReplicas": 5, "target": 3, "scaleToZeroAfterSeconds": 60})
    cfg = PolicyConfig.from_spec(spec)
    assert (cfg.min_replicas, cfg.max_replicas, cfg.target, cfg.scale_to_zero_after_seconds) == (0, 5, 3, 60)
    assert cfg.scale_down_stabilization_seconds == 300


OBSERVATIONS = st.builds(
    lambda now, replicas, ready_share, value, demand, active: Observation(
        now, replicas, min(replicas, ready_share), value, demand, active
    ),
    st.floats(0, 1e6),
    st.integers(0, 50),
    st.integers(0, 50),
    st.none() | st.floats(0, 1e4),
    st.none() | st.floats(0, 1e4),
    st.none() | st.booleans(),
)


@given(
    st.integers(0, 10).flatmap(lambda lo: st.tuples(st.just(lo), st.integers(max(lo, 1), 30))),
    st.floats(0.1, 100),
    st.lists(OBSERVATIONS, min_size=1, max_size=20),
    st.none() | st.integers(1, 300),
)
def test_desired_always_within_bounds(
    bounds: tuple[int, int], target: float, seen: list[Observation], idle_after: int | None
) -> None:
    low, high = bounds
    cfg = PolicyConfig(low, high, target, 0, 60, idle_after if low == 0 else None)
    state = PolicyState()
    for observed in sorted(seen, key=lambda o: o.now):
        decision = decide(cfg, observed, state)
        state = decision.state
        assert low <= decision.desired <= high
        assert decision.reason in policy.REASONS
        expected = "up" if decision.desired > observed.replicas else "down" if decision.desired < observed.replicas else "none"
        assert decision.direction == expected
        if observed.value is None and observed.replicas > 0 and observed.active is not False:
            assert decision.desired == min(max(observed.replicas, low), high)  # unknown holds
