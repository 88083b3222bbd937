"""Lepton's autoscaler versus an HPA-rule baseline, live: one load step on the local cluster, one run.

    PYTHONPATH=operator:workloads:e2e python bench/inference_autoscaling_live.py

``inference_autoscaling.py`` compares the two policies on a fluid model; this runs the real parts,
as ``e2e/tests/test_inference_autoscaling.py`` does, twice side by side in one namespace:

- the local cluster (``localcluster.up()``: kube-apiserver, scheduler, controller-manager, kwok
  nodes), the operator from this checkout as a process serving only the bench's namespace (its
  own peering name), and one real Prometheus (``serving.Prometheus``);
- two InferenceServices of one model: ``lepton`` with ``spec.autoscaling`` (the operator's loop;
  our defaults except the signal, target and bounds the trace needs), and ``hpa`` without it,
  which :class:`HpaLoop` scales through the /scale subresource (``kubectl scale``) by the HPA
  rule (``hpa_rule``, HPA's defaults) every 15 s on the same PromQL
  (``scaling.signals.signal_query``, same window) and the same ready count (the Deployment's);
- per service a ``serving.Replicas`` (one Triton simulator per Ready pod, its Prometheus targets)
  and a ``serving.Load`` (tritonclient, open loop); one pacer sets both loads' rates at the same
  instants: low, a step to high, low again for long enough that both scale back down.

The HPA loop's phase is fixed so that the step falls mid-period (7.5 s before its next tick, the
mean of a uniformly random phase); the operator's 2 s loop runs freely.

Measured per service, from a watch on the Deployments (``spec.replicas``: the decision as the
cluster sees it) and the harness's serving endpoints (a replica serves once its simulator answers
``/v2/models/<m>/ready``): seconds from the step to the first scale-up, to that many replicas
serving and to the replicas the high load needs serving; peak replicas and the overshoot over
that need; direction changes; replica-minutes over the trace; seconds from the step down to the
first scale-down; requests failed (in all, and after the step down), latency p50/p99. Printed and
written as JSON (``--out``) with the run's shape and the ratios lepton/hpa. Not a test: one run's
figures on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes
import numpy as np
import torch

import localcluster
from hpa_rule import DOWN_STABILIZATION_SECONDS, PERIOD_SECONDS, HpaRule
from lepton_operator.api.inference import AutoscalingSpec, Signal
from lepton_operator.scaling import signals
from lepton_workloads import export
from localcluster import config
from localcluster.kube import Kubectl, KubectlError, wait_until
from localcluster.lepton import install_crds, start_operator
from localcluster.serving import Load, Prometheus, Replicas

MODEL = "double"
SERVICE_TIME_MS = 100.0  # one instance per replica: 10 requests/s at most
TARGET = 0.5  # requests in the server per replica (Little's law)
LOW_RATE, HIGH_RATE = 2.5, 13.0  # requests/s: one replica, then more than one can serve
MAX_REPLICAS = 8
SIGNAL: Signal = "concurrency"
WINDOW_SECONDS: int = AutoscalingSpec.model_fields["window_seconds"].default
SERVICES = ("lepton", "hpa")
SAMPLE_SECONDS = 0.25


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


@dataclass
class Timeline:
    """A step function of time: ``(monotonic seconds, value)`` at each change."""

    points: list[tuple[float, int]] = field(default_factory=list)

    def record(self, at: float, value: int) -> None:
        if not self.points or self.points[-1][1] != value:
            self.points.append((at, value))

    def at(self, when: float) -> int:
        before = [value for at, value in self.points if at <= when]
        return before[-1] if before else (self.points[0][1] if self.points else 0)

    def between(self, start: float, end: float) -> list[tuple[float, int]]:
        """The value at ``start``, then each change up to ``end``."""
        return [(start, self.at(start))] + [(at, value) for at, value in self.points if start < at <= end]

    def reaches(self, since: float, level: int) -> float | None:
        """Seconds from ``since`` until the value is at least ``level``."""
        hit = next((at for at, value in self.between(since, math.inf) if value >= level), None)
        return None if hit is None else hit - since

    def first_move(self, since: float, up: bool) -> tuple[float, int] | None:
        """Seconds from ``since`` to the first increase (or decrease), and the value it went to."""
        steps = self.between(since, math.inf)
        for (_, before), (at, value) in zip(steps, steps[1:]):
            if (value > before) == up:
                return at - since, value
        return None

    def direction_changes(self, start: float, end: float) -> int:
        values = [value for _, value in self.between(start, end)]
        moves = [b > a for a, b in zip(values, values[1:])]
        return sum(1 for a, b in zip(moves, moves[1:]) if a != b)

    def integral(self, start: float, end: float) -> float:
        steps = self.between(start, end) + [(end, 0)]
        return sum(value * (next_at - at) for (at, value), (next_at, _) in zip(steps, steps[1:]))


class DeploymentReplicas(threading.Thread):
    """``spec.replicas`` of every Deployment of a namespace over time, from a watch."""

    def __init__(self, namespace: str) -> None:
        super().__init__(daemon=True)
        self.namespace = namespace
        self.timelines: dict[str, Timeline] = {name: Timeline() for name in SERVICES}

    def run(self) -> None:
        apps = kubernetes.client.AppsV1Api()
        while True:  # a daemon: ends with the process
            watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            for event in watch.stream(apps.list_namespaced_deployment, self.namespace, timeout_seconds=60):  # type: ignore[no-untyped-call]
                deployment = event["object"]
                if deployment.metadata.name in self.timelines and deployment.spec.replicas is not None:
                    self.timelines[deployment.metadata.name].record(time.monotonic(), deployment.spec.replicas)


class HpaLoop(threading.Thread):
    """The HPA rule's controller: every period read the /scale subresource, ready pods and signal; scale."""

    def __init__(self, kubectl: Kubectl, name: str, rule: HpaRule, prometheus_url: str, query: signals.Query,
                 first_tick: float) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.kubectl, self.name, self.rule, self.url, self.query = kubectl, name, rule, prometheus_url, query
        self.first_tick = first_tick
        self.decisions: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def tick(self) -> None:
        replicas = int(self.kubectl.get("lis", self.name, "--subresource=scale")["spec"].get("replicas", 0))
        ready = int(self.kubectl.get("deployment", self.name).get("status", {}).get("readyReplicas") or 0)
        raw = signals.known(self.url, self.query.promql)
        if raw is None or (self.query.total and ready == 0):
            value = None  # unknown: the HPA holds
        else:
            value = raw / ready if self.query.total else raw  # per ready pod, as the operator reads it
        now = time.monotonic()
        desired = self.rule.decide(now, replicas, ready, value)
        if desired != replicas:
            self.kubectl("scale", f"lis/{self.name}", f"--replicas={desired}")
            self.decisions.append({"at": now, "from": replicas, "to": desired, "ready": ready, "value": value})

    def run(self) -> None:
        next_tick = self.first_tick
        while not self.stop.wait(max(0.0, next_tick - time.monotonic())):
            next_tick += PERIOD_SECONDS
            try:
                self.tick()
            except KubectlError as error:  # the HPA skips a round it cannot read or write
                self.errors.append(str(error))


@dataclass(frozen=True)
class Trace:
    """Seconds of each phase; the rates are the module's LOW_RATE and HIGH_RATE."""

    low_seconds: float
    high_seconds: float
    after_seconds: float

    def phases(self) -> list[tuple[float, float]]:
        """``(seconds from the start, rate)`` at which each phase begins."""
        return [(0.0, LOW_RATE), (self.low_seconds, HIGH_RATE), (self.low_seconds + self.high_seconds, LOW_RATE)]

    @property
    def seconds(self) -> float:
        return self.low_seconds + self.high_seconds + self.after_seconds


@dataclass
class Side:
    """One InferenceService under test: its data plane and what was seen of it."""

    name: str
    load: Load
    harness: Replicas
    serving: Timeline = field(default_factory=Timeline)
    failed_at_step_down: int = 0
    latencies_from: int = 0


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def figures(side: Side, replicas: Timeline, start: float, step: float, down: float, end: float,
            needed: int) -> dict[str, Any]:  # fmt: skip
    """The figures of one side over the trace ``[start, end]`` (step up at ``step``, down at ``down``)."""
    up = replicas.first_move(step, up=True)
    scale_down = replicas.first_move(down, up=False)
    peak = max(value for _, value in replicas.between(start, end))
    latencies = side.load.latencies[side.latencies_from :]
    return {
        "step_to_decision_s": None if up is None else up[0],
        "first_decision_replicas": None if up is None else up[1],
        "step_to_decided_serving_s": None if up is None else side.serving.reaches(step, up[1]),
        "step_to_needed_serving_s": side.serving.reaches(step, needed),
        "peak_replicas": peak,
        "overshoot_replicas": peak - needed,
        "direction_changes": replicas.direction_changes(start, end),
        "replica_minutes": replicas.integral(start, end) / 60,
        "step_down_to_scale_down_s": None if scale_down is None else scale_down[0],
        "failed_requests": side.load.failed,
        "failed_after_step_down": side.load.failed - side.failed_at_step_down,
        "succeeded_requests": side.load.succeeded,
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p99_s": percentile(latencies, 0.99),
    }


def ratios(ours: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    return {key: (ours[key] / base[key] if isinstance(ours[key], (int, float)) and base[key] else None) for key in ours}


def service(name: str, prometheus_url: str, down_stabilization: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": MODEL, "source": {"uri": "https://models.example/double/"}, "maxBatchSize": 8,
                  "inputs": [{"name": "INPUT__0", "dims": [4]}], "outputs": [{"name": "OUTPUT__0", "dims": [4]}]},
        "replicas": 1,
    }  # fmt: skip
    if name == "lepton":
        spec["autoscaling"] = {"minReplicas": 1, "maxReplicas": MAX_REPLICAS, "signal": SIGNAL, "target": TARGET,
                               "windowSeconds": WINDOW_SECONDS, "scaleDownStabilizationSeconds": down_stabilization,
                               "prometheus": {"url": prometheus_url}}  # fmt: skip
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService", "metadata": {"name": name}, "spec": spec}


def selector(kubectl: Kubectl, name: str) -> str | None:
    selected: str | None = kubectl.get("lis", name).get("status", {}).get("selector")
    return selected


def sample_serving(sides: list[Side], stop: threading.Event) -> None:
    while not stop.wait(SAMPLE_SECONDS):
        for side in sides:
            side.serving.record(time.monotonic(), len(side.load.targets))


def run(kubectl: Kubectl, namespace: str, workdir: Path, prometheus: Prometheus, trace: Trace,
        down_stabilization: int) -> dict[str, Any]:  # fmt: skip
    """Both services through ``trace``; the figures per service and their ratios."""
    for name in SERVICES:
        kubectl.apply(service(name, prometheus.url, down_stabilization), "--server-side")
    selectors = {name: str(wait_until(partial(selector, kubectl, name), 60, f"{name}'s status.selector"))
                 for name in SERVICES}  # fmt: skip
    watch = DeploymentReplicas(namespace)
    watch.start()
    sides = []
    for name in SERVICES:
        load = Load(MODEL, lambda: np.ones((1, 4), dtype=np.float32))
        harness = Replicas(partial(kubectl.get, "pods", None, "-l", selectors[name]), namespace=namespace, service=name, model=MODEL, repository=workdir / "models",
                           prometheus=prometheus, load=load, service_time_ms=SERVICE_TIME_MS)  # fmt: skip
        sides.append(Side(name, load, harness))
    query = signals.signal_query(SIGNAL, signals.Series(namespace, "hpa", MODEL), WINDOW_SECONDS)
    stop = threading.Event()
    threads = [threading.Thread(target=s.harness.run, daemon=True) for s in sides]
    threads.append(threading.Thread(target=sample_serving, args=(sides, stop), daemon=True))
    for thread in threads:
        thread.start()
    hpa: HpaLoop | None = None
    try:
        for side in sides:
            wait_until(lambda: side.load.targets, 120, f"{side.name}'s first replica serving")
            side.load.rate = LOW_RATE
            threading.Thread(target=side.load.run, daemon=True).start()
        for name in SERVICES:  # the rate window needs two scrapes of a replica
            promql = signals.signal_query(SIGNAL, signals.Series(namespace, name, MODEL), WINDOW_SECONDS).promql
            wait_until(lambda: signals.known(prometheus.url, promql) is not None, 60, f"Prometheus' signal for {name}")
        start = time.monotonic()
        marks = [start + at for at, _ in trace.phases()]
        step, down, end = marks[1], marks[2], start + trace.seconds
        first_tick = step + PERIOD_SECONDS / 2 - PERIOD_SECONDS * math.floor(trace.low_seconds / PERIOD_SECONDS)
        rule = HpaRule(TARGET, 1, MAX_REPLICAS, down_stabilization_seconds=down_stabilization)
        hpa = HpaLoop(kubectl, "hpa", rule, prometheus.url, query, first_tick)
        hpa.start()
        for side in sides:
            side.latencies_from = len(side.load.latencies)
        for mark, (at, rate) in zip(marks, trace.phases()):
            time.sleep(max(0.0, mark - time.monotonic()))
            for side in sides:
                side.load.rate = rate
                if mark == down:
                    side.failed_at_step_down = side.load.failed
            print(f"{at:5.0f} s: {rate} requests/s each; replicas "
                  + ", ".join(f"{n} {watch.timelines[n].at(time.monotonic())}" for n in SERVICES), flush=True)  # fmt: skip
        while time.monotonic() < end:
            time.sleep(min(15.0, end - time.monotonic()))
            print(f"{time.monotonic() - start:5.0f} s: replicas "
                  + ", ".join(f"{n} {watch.timelines[n].at(time.monotonic())} ({len(s.load.targets)} serving)"
                              for n, s in zip(SERVICES, sides)), flush=True)  # fmt: skip
        time.sleep(3)  # requests in flight at the end finish or fail before counting
    finally:
        if hpa is not None:
            hpa.stop.set()
        stop.set()
        for side in sides:
            side.load.stop()
        for side in sides:
            side.harness.stop()
    needed = math.ceil(HIGH_RATE * SERVICE_TIME_MS / 1000 / TARGET)
    results = {s.name: figures(s, watch.timelines[s.name], start, step, down, end, needed) for s in sides}
    assert hpa is not None
    deployment = kubectl.get("deployment", "hpa")["spec"]["replicas"]
    scale = kubectl.get("lis", "hpa", "--subresource=scale")["spec"]["replicas"]
    return {
        "figures": results,
        "ratios_lepton_over_hpa": ratios(results["lepton"], results["hpa"]),
        "needed_replicas": needed,
        "hpa_decisions": [{**d, "at": round(d["at"] - step, 1)} for d in hpa.decisions],
        "hpa_errors": hpa.errors[:5],
        "hpa_scale_followed": deployment == scale,  # the operator honours /scale with autoscaling off
        "hpa_first_tick_after_step_s": (first_tick - step) % PERIOD_SECONDS,
        "timelines": {s.name: {"replicas": [(round(at - step, 1), v) for at, v in watch.timelines[s.name].points],
                               "serving": [(round(at - step, 1), v) for at, v in s.serving.points]}
                      for s in sides},  # fmt: skip
    }


def report(result: dict[str, Any]) -> None:
    ours, base, ratio = result["figures"]["lepton"], result["figures"]["hpa"], result["ratios_lepton_over_hpa"]

    def shown(value: Any) -> str:
        return "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

    print(f"\n{'':28} {'lepton':>8} {'hpa':>8}  lepton/hpa")
    for key in ours:
        print(f"  {key:26} {shown(ours[key]):>8} {shown(base[key]):>8}  {shown(ratio[key])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--low-seconds", type=float, default=30.0)
    parser.add_argument("--high-seconds", type=float, default=60.0)
    parser.add_argument("--down-stabilization", type=int, default=int(DOWN_STABILIZATION_SECONDS),
                        help="scale-down stabilisation of both policies (HPA's default and ours: 300 s)")
    parser.add_argument("--after-seconds", type=float, default=None,
                        help="low load after the step down (default: the stabilisation + 90 s: the rate window"
                             " decays, then HPA's next tick)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/inference_autoscaling_live.json"))
    args = parser.parse_args()
    after = args.after_seconds if args.after_seconds is not None else args.down_stabilization + 90.0
    trace = Trace(args.low_seconds, args.high_seconds, after)
    shortened = args.down_stabilization != DOWN_STABILIZATION_SECONDS
    if shortened:
        print(f"NOTE: scale-down stabilisation shortened to {args.down_stabilization} s for both policies"
              f" (HPA's default and ours: {DOWN_STABILIZATION_SECONDS:.0f} s)")  # fmt: skip

    cluster = localcluster.up()
    admin = cluster.kubectl()
    install_crds(admin)
    suffix = uuid.uuid4().hex[:6]
    namespace, peering = f"bench-autoscaling-{suffix}", f"bench-autoscaling-{suffix}"
    admin.create(config.kwok_namespace(namespace))  # replicas go to kwok nodes
    kubectl = admin.in_namespace(namespace)
    wait_until(lambda: kubectl.get_or_none("serviceaccount", "default"), 30, "the namespace's ServiceAccount")
    workdir = Path(tempfile.mkdtemp(prefix=f"{namespace}-"))
    export.write(Doubler(), (4,), workdir / "models", MODEL, max_batch_size=8)
    (workdir / "prometheus").mkdir()
    prometheus = Prometheus(workdir / "prometheus")
    operator = start_operator(cluster.kubeconfig, workdir / "operator.log",
                              extra_args=("--namespace", namespace, "--peering-name", peering))  # fmt: skip
    kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        load_before = os.getloadavg()[0]
        result = run(kubectl, namespace, workdir, prometheus, trace, args.down_stabilization)
        load_after = os.getloadavg()[0]
    finally:
        kubectl("delete", "lis", "--all", "--wait=true", timeout=120)  # while the operator runs
        operator.stop()
        admin.delete("clusterkopfpeering", peering)
        admin.delete("namespace", namespace)
        prometheus.stop()
    shape = {
        "machine": f"{os.cpu_count()} cores shared with other work; local cluster (kube-apiserver, kwok nodes)",
        "load_average_1m": {"before": load_before, "after": load_after},
        "caveat": "kwok marks a pod Ready at once, its simulator serves seconds later: both autoscalers count"
                  " starting replicas as ready (no capacity in flight to hold on), and both sides' simulators"
                  " start on the same 2 cores",
        "services": "2 InferenceServices side by side, one namespace, one Prometheus (1 s scrape)",
        "model": f"{MODEL}: Triton simulator per serving replica, {SERVICE_TIME_MS:.0f} ms service time, 1 instance",
        "signal": f"{SIGNAL} (Little's law), window {WINDOW_SECONDS} s, target {TARGET} per replica",
        "trace": {"low_rps": LOW_RATE, "high_rps": HIGH_RATE, **asdict(trace)},
        "max_replicas": MAX_REPLICAS,
        "down_stabilization_s": args.down_stabilization,
        "down_stabilization_shortened": shortened,
        "loops": {"lepton_s": 2.0, "hpa_s": PERIOD_SECONDS},
        "operator_log": str(workdir / "operator.log"),
    }
    output = {"shape": shape, **result}
    report(output)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
