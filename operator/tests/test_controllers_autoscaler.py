"""The autoscaling loop against fake cluster and Prometheus: decisions acted on, events, status, metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from lepton_operator import metrics
from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.controllers import kube
from lepton_operator.controllers.autoscaler import Autoscaler, Io
from lepton_operator.controllers.wakeups import ObjectKey
from lepton_operator.scaling import signals

KEY = ObjectKey("InferenceService", "prod", "serve")
READY_CONDITION = {"type": "Ready", "status": "True", "reason": "ModelReady", "message": "3/3 replicas",
                   "observedGeneration": 3, "lastTransitionTime": "1970-01-01T00:00:00Z"}  # fmt: skip
LOGGER = logging.getLogger("test")


def spec(**autoscaling: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({
        "model": {"name": "resnet", "source": {"uri": "https://m.example/r/"}},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "target": 2, "signal": "pendingRequests",
                        "prometheus": {"url": "http://prom:9090"}, **autoscaling},
    })  # fmt: skip


class FakeWorld:
    """A Deployment whose replicas become ready at once, and a Prometheus answering from a dict."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.answers: dict[str, float | None] = {}
        self.events: list[tuple[str, str]] = []
        self.statuses: list[Mapping[str, Any]] = []
        self.queries: list[tuple[str, str]] = []
        self.pod_loads: dict[str, float] = {}
        self.costs: dict[str, int] = {}
        self.prometheus_down: str | None = None  # the error every query raises while set
        self.service: dict[str, Any] = {"metadata": {"generation": 3, "resourceVersion": "100"},
                                        "status": {"conditions": [READY_CONDITION]}}  # fmt: skip
        self.stale_read: dict[str, Any] | None = None  # what a read returns instead, while set

    def io(self) -> Io:
        def read(namespace: str, name: str) -> dict[str, Any]:
            return {"spec": {"replicas": self.replicas}, "status": {"readyReplicas": self.replicas}}

        def scale(namespace: str, name: str, replicas: int) -> None:
            self.replicas = replicas

        def query(url: str, promql: str) -> float | None:
            self.queries.append((url, promql))
            if self.prometheus_down is not None:
                raise signals.PrometheusError(self.prometheus_down)
            for prefix, value in self.answers.items():
                if promql.startswith(prefix):
                    return value
            return None

        def cost(namespace: str, pod: str, value: int) -> None:
            self.costs[pod] = value

        def patch_status(namespace: str, name: str, status: Mapping[str, Any], version: str | None) -> None:
            if version is not None and version != self.service["metadata"]["resourceVersion"]:
                raise kube.WriteConflict("changed")
            self.statuses.append(status)
            self.service["status"] = {**self.service["status"], **status}
            self.service["metadata"]["resourceVersion"] = str(int(self.service["metadata"]["resourceVersion"]) + 1)

        return Io(read, scale, lambda obj, reason, message: self.events.append((reason, message)),
                  patch_status, query, lambda url, promql: dict(self.pod_loads), cost,
                  lambda namespace, name: self.stale_read or self.service)  # fmt: skip

    def load(self, pending: float | None, requests: float | None = 10.0) -> None:
        self.answers = {"sum(nv_inference_pending_request_count": pending, "sum(increase(": requests}


def test_a_load_step_is_acted_on_in_one_round_with_an_event_status_and_metrics() -> None:
    world = FakeWorld(replicas=2)
    clock = [1000.0]
    scaler = Autoscaler(world.io(), clock=lambda: clock[0])
    scaler.track(KEY, "uid-1", spec())
    world.load(pending=4.0)  # 2 per replica: on target
    assert scaler.step(KEY).reason == "WithinTolerance"  # type: ignore[union-attr]
    world.load(pending=16.0)  # 8 per replica
    clock[0] += 5
    decision = scaler.step(KEY)
    assert decision is not None and (decision.desired, decision.reason) == (8, "AboveTarget")
    assert world.replicas == 8
    assert world.events == [("ScaledUp", "2 -> 8 replicas: AboveTarget (pendingRequests 8, target 2)")]
    status = world.statuses[-1]
    assert status["desiredReplicas"] == 8
    assert status["autoscaling"]["value"] == 8.0 and status["autoscaling"]["lastDecision"] == {
        "from": 2, "to": 8, "reason": "AboveTarget"}  # fmt: skip
    assert status["autoscaling"]["lastScaleTime"] == "1970-01-01T00:16:45Z"
    labels = {"namespace": "prod", "name": "serve"}
    assert metrics.REGISTRY.get_sample_value("lepton_inference_desired_replicas", labels) == 8
    assert metrics.REGISTRY.get_sample_value("lepton_inference_signal_value", {**labels, "signal": "pendingRequests"}) == 8
    assert (metrics.REGISTRY.get_sample_value("lepton_inference_scale_decisions_total",
                                              {"direction": "up", "reason": "AboveTarget"}) or 0) >= 1  # fmt: skip
    url, promql = world.queries[0]
    assert url == "http://prom:9090" and 'service="serve"' in promql and 'namespace="prod"' in promql


def test_missing_metrics_hold_and_show_no_value() -> None:
    world = FakeWorld(replicas=3)
    scaler = Autoscaler(world.io(), clock=lambda: 0.0)
    scaler.track(KEY, "uid-1", spec(minReplicas=0, scaleToZeroAfterSeconds=1))
    world.load(pending=None, requests=None)
    decision = scaler.step(KEY)
    assert decision is not None and (decision.desired, decision.reason) == (3, "SignalUnknown")
    assert world.replicas == 3 and world.events == []
    assert world.statuses[-1]["autoscaling"]["value"] is None
    assert metrics.REGISTRY.get_sample_value(
        "lepton_inference_signal_value", {"namespace": "prod", "name": "serve", "signal": "pendingRequests"}) is None


def test_no_prometheus_anywhere_is_unknown() -> None:
    world = FakeWorld(replicas=2)
    scaler = Autoscaler(world.io())
    scaler.track(KEY, "uid-1", spec(prometheus=None))
    assert scaler.step(KEY).reason == "SignalUnknown"  # type: ignore[union-attr]
    assert world.queries == []
    scaler.prometheus_url = "http://default:9090"
    world.load(pending=4.0)
    scaler.step(KEY)
    assert world.queries[0][0] == "http://default:9090"


def test_untracked_and_non_autoscaled_services_are_not_scaled() -> None:
    world = FakeWorld(replicas=2)
    scaler = Autoscaler(world.io())
    scaler.track(KEY, "uid-1", spec())
    scaler.track(KEY, "uid-1", InferenceServiceSpec.model_validate(
        {"model": {"name": "m", "source": {"uri": "https://m.example/r/"}}}))  # fmt: skip
    assert scaler.tracked() == []
    assert scaler.step(KEY) is None
    scaler.track(KEY, "uid-1", spec())
    scaler.untrack(KEY)
    assert scaler.tracked() == [] and world.statuses == []


def test_a_round_steps_every_service_and_survives_one_failing() -> None:
    world = FakeWorld(replicas=1)
    world.load(pending=10.0)
    io = world.io()
    read = io.read_deployment

    def flaky(namespace: str, name: str) -> Mapping[str, Any] | None:
        if name == "broken":
            raise RuntimeError("API down")
        return read(namespace, name)

    io.read_deployment = flaky
    scaler = Autoscaler(io)
    scaler.track(ObjectKey("InferenceService", "prod", "broken"), "uid-2", spec())
    scaler.track(KEY, "uid-1", spec())
    asyncio.run(scaler.round(LOGGER))
    assert world.replicas == 5


def test_scale_down_prices_pods_by_load_so_the_idle_ones_go_first() -> None:
    world = FakeWorld(replicas=4)
    clock = [0.0]
    scaler = Autoscaler(world.io(), clock=lambda: clock[0])
    scaler.track(KEY, "uid-1", spec(scaleDownStabilizationSeconds=0))
    world.load(pending=2.0)  # 0.5 per replica: one replica is enough
    world.pod_loads = {"serve-a": 1.25, "serve-b": 0.0, "serve-c": 0.5}
    decision = scaler.step(KEY)
    assert decision is not None and decision.direction == "down" and world.replicas == 1
    assert world.costs == {"serve-a": 1250, "serve-b": 0, "serve-c": 500}
    world.costs.clear()
    clock[0] += 5
    world.load(pending=20.0)
    scaler.step(KEY)
    assert world.replicas > 1 and world.costs == {}  # only scale-down prices pods


def scaling_active(world: FakeWorld) -> dict[str, Any]:
    [condition] = [c for c in world.service["status"]["conditions"] if c["type"] == "ScalingActive"]
    return condition


def test_prometheus_down_holds_the_replicas_and_the_condition_says_why_until_it_is_back() -> None:
    world = FakeWorld(replicas=4)
    clock = [1000.0]
    scaler = Autoscaler(world.io(), clock=lambda: clock[0])
    scaler.track(KEY, "uid-1", spec(scaleDownStabilizationSeconds=10))
    world.load(pending=8.0)  # 2 per replica: on target
    scaler.step(KEY)
    assert scaling_active(world)["status"] == "True" and scaling_active(world)["reason"] == "WithinTolerance"
    world.prometheus_down = "cannot query http://prom:9090: [Errno 111] Connection refused"
    for _ in range(30):  # a minute of rounds: idle would have scaled down long ago
        clock[0] += 2
        decision = scaler.step(KEY)
        assert decision is not None and (decision.desired, decision.reason) == (4, "SignalUnknown")
    assert world.replicas == 4 and world.events == []
    down = scaling_active(world)
    assert (down["status"], down["reason"], down["observedGeneration"]) == ("False", "SignalUnknown", 3)
    assert down["message"] == ("holding 4 replicas: the signal is unknown (Prometheus failed: "
                               "cannot query http://prom:9090: [Errno 111] Connection refused)")  # fmt: skip
    assert down["lastTransitionTime"] == "1970-01-01T00:16:42Z"  # the first round it failed
    assert world.service["status"]["conditions"][0] == READY_CONDITION  # the reconciler's, kept as found
    world.prometheus_down = None
    world.load(pending=0.0, requests=0.0)
    clock[0] += 2
    scaler.step(KEY)
    assert scaling_active(world)["status"] == "True"
    for _ in range(10):
        clock[0] += 2
        scaler.step(KEY)
    assert world.replicas == 1  # back on real data, idle scales down


def test_a_missing_sample_and_no_prometheus_are_said_apart() -> None:
    world = FakeWorld(replicas=2)
    scaler = Autoscaler(world.io())
    scaler.track(KEY, "uid-1", spec())
    world.load(pending=None)
    scaler.step(KEY)
    assert scaling_active(world)["message"] == (
        "holding 2 replicas: the signal is unknown (Prometheus has no sample of pendingRequests for this service)")
    scaler.track(KEY, "uid-1", spec(prometheus=None))
    scaler.step(KEY)
    assert "no Prometheus: set spec.autoscaling.prometheus.url" in scaling_active(world)["message"]


def test_a_condition_write_that_conflicts_is_retried_next_round_never_forced() -> None:
    world = FakeWorld(replicas=2)
    clock = [1000.0]
    scaler = Autoscaler(world.io(), clock=lambda: clock[0])
    scaler.track(KEY, "uid-1", spec())
    world.load(pending=4.0)
    scaler.step(KEY)
    writes = len(world.statuses)
    world.prometheus_down = "timed out"
    world.stale_read = {**world.service, "metadata": {**world.service["metadata"], "resourceVersion": "99"}}
    clock[0] += 2
    scaler.step(KEY)
    assert "conditions" not in world.statuses[-1] and len(world.statuses) == writes + 1  # status.autoscaling only
    world.stale_read = None
    clock[0] += 2
    scaler.step(KEY)  # the next round writes the condition, though nothing else changed
    assert scaling_active(world)["reason"] == "SignalUnknown"
    assert "conditions" in world.statuses[-1]
    clock[0] += 2
    before = len(world.statuses)
    scaler.step(KEY)
    assert len(world.statuses) == before  # steady: nothing new to write
