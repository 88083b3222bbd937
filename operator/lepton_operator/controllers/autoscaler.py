"""The built-in autoscaler: one loop over every autoscaled InferenceService.

Not one timer per object: a single asyncio task runs a round every
``interval`` seconds (2 s by default, as Knative's KPA ticks; HPA's loop is
15 s), and a round steps every tracked service in worker threads. A step reads the service's
Deployment (replicas, ready), reads its signal, activity and demand from
Prometheus (``scaling.signals``), asks the pure policy (``scaling.policy``) and
acts on the decision: before a scale-down, each pod's deletion cost is set to
its load (so the ReplicaSet removes the least-loaded replicas first and
in-flight work finishes elsewhere); the Deployment's ``spec.replicas`` (a merge patch under
the ``lepton-autoscaler`` field manager, while holding :data:`REPLICAS_LOCK`
so the reconciler never re-applies a stale count), a Normal event per change,
``status.autoscaling``, the ``ScalingActive`` condition (``status.autoscaling``
module: False with the reason while the signal is unknown, e.g. Prometheus
down, and the count held) and the ``lepton_inference_*`` metrics.

Membership comes from the reconciler: each pass calls :meth:`Autoscaler.track`
with the current spec (so a spec edit takes effect at the next round, with the
recommendation history kept), and the object's reconcile loop ending (object
deleted, or peering paused this replica) calls :meth:`Autoscaler.untrack`. A
replica that stands by therefore tracks nothing and scales nothing.

Cluster and Prometheus access go through :class:`Io` so a test can replay a
trace against fakes. A query that fails raises ``signals.PrometheusError``: its
message is what the condition shows.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lepton_operator import metrics
from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.api.meta import API_VERSION, INFERENCE_SERVICE
from lepton_operator.controllers import kube
from lepton_operator.controllers.reconcile import Logger
from lepton_operator.controllers.wakeups import ObjectKey
from lepton_operator.scaling import signals
from lepton_operator.scaling.policy import SIGNAL_UNKNOWN, Decision, Observation, PolicyConfig, PolicyState, decide
from lepton_operator.status import autoscaling as scaling_status
from lepton_operator.status.conditions import format_time

#: Held while reading and writing a Deployment's replicas (the reconciler and the autoscaler).
REPLICAS_LOCK = threading.Lock()
FIELD_MANAGER = "lepton-autoscaler"
#: The ReplicaSet controller removes pods with the lowest cost first on scale-down.
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
#: Status is written on every change of replicas or reason, otherwise at most this often.
STATUS_EVERY_SECONDS = 30.0


@dataclass
class Io:
    """What a step touches outside the process (the kube/Prometheus ones by default)."""

    read_deployment: Callable[[str, str], Mapping[str, Any] | None]
    set_replicas: Callable[[str, str, int], None]
    post_event: Callable[[Mapping[str, Any], str, str], None]
    #: (namespace, name, status, resourceVersion the write requires, or None for none).
    patch_status: Callable[[str, str, Mapping[str, Any], str | None], None]
    #: A value, ``None`` for no sample; raises ``signals.PrometheusError`` when the query fails.
    query: Callable[[str, str], float | None]
    load_by_pod: Callable[[str, str], dict[str, float]]
    set_deletion_cost: Callable[[str, str, int], None]
    read_service: Callable[[str, str], Mapping[str, Any] | None]


def _set_replicas(namespace: str, name: str, replicas: int) -> None:
    kube.patch("apps/v1", "Deployment", namespace, name, {"spec": {"replicas": replicas}}, field_manager=FIELD_MANAGER)


def _set_deletion_cost(namespace: str, pod: str, cost: int) -> None:
    kube.patch("v1", "Pod", namespace, pod, {"metadata": {"annotations": {DELETION_COST: str(cost)}}},
               field_manager=FIELD_MANAGER)  # fmt: skip


def cluster_io() -> Io:
    """The :class:`Io` of a running operator: the API server through ``kube``, Prometheus' HTTP API."""
    return Io(
        read_deployment=lambda namespace, name: kube.get("apps/v1", "Deployment", namespace, name),
        set_replicas=_set_replicas,
        post_event=lambda involved, reason, message: kube.post_event(involved, "Normal", reason, message, FIELD_MANAGER),
        patch_status=lambda namespace, name, status, version: kube.patch_status(
            INFERENCE_SERVICE, namespace, name, status, resource_version=version),
        query=signals.instant_query,
        load_by_pod=signals.by_pod,
        set_deletion_cost=_set_deletion_cost,
        read_service=lambda namespace, name: kube.get(API_VERSION, INFERENCE_SERVICE.kind, namespace, name),
    )


@dataclass
class Tracked:
    """One autoscaled service: its identity, current spec and the policy's memory."""

    key: ObjectKey
    uid: str
    spec: InferenceServiceSpec
    state: PolicyState = field(default_factory=PolicyState)
    last_status_at: float = float("-inf")
    last_scale_time: str | None = None
    last_decision: dict[str, Any] | None = None
    unknown_because: str | None = None

    def involved(self) -> dict[str, Any]:
        metadata = {"name": self.key.name, "namespace": self.key.namespace, "uid": self.uid}
        return {"apiVersion": API_VERSION, "kind": INFERENCE_SERVICE.kind, "metadata": metadata}


class Autoscaler:
    """The process-wide autoscaler; see the module docstring."""

    def __init__(self, io: Io | None = None, prometheus_url: str | None = None, clock: Callable[[], float] = time.time):
        self.io = io
        self.prometheus_url = prometheus_url
        self.clock = clock
        self._lock = threading.Lock()
        self._tracked: dict[ObjectKey, Tracked] = {}

    def track(self, key: ObjectKey, uid: str, spec: InferenceServiceSpec) -> None:
        """Scale ``key`` from the next round on (or stop, when its spec has no autoscaling)."""
        if spec.autoscaling is None:
            self.untrack(key)
            return
        with self._lock:
            known = self._tracked.get(key)
            if known is None or known.uid != uid:
                self._tracked[key] = Tracked(key, uid, spec)
            else:
                known.spec = spec

    def untrack(self, key: ObjectKey) -> None:
        with self._lock:
            gone = self._tracked.pop(key, None)
        if gone is not None:
            metrics.forget_service(key.namespace, key.name)

    def tracked(self) -> list[ObjectKey]:
        with self._lock:
            return sorted(self._tracked)

    def _observe(self, io: Io, entry: Tracked, deployment: Mapping[str, Any], now: float) -> tuple[Observation, str | None]:
        """What the loop sees, and why the signal is unknown when it is (``None``: it is known)."""
        scaling = entry.spec.autoscaling
        assert scaling is not None
        replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
        ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
        url = scaling.prometheus.url if scaling.prometheus else self.prometheus_url
        if url is None:
            return Observation(now, replicas, ready, None), "no Prometheus: set spec.autoscaling.prometheus.url or the operator's --prometheus-url"
        series = signals.Series(entry.key.namespace, entry.key.name, entry.spec.model.name)
        query = signals.signal_query(scaling.signal, series, scaling.window_seconds)
        value: float | None = None
        try:
            raw = io.query(url, query.promql)
        except signals.PrometheusError as error:
            unknown_because: str | None = f"Prometheus failed: {error}"
        else:
            if raw is None:
                unknown_because = f"Prometheus has no sample of {scaling.signal} for this service"
            elif query.total and ready == 0:
                unknown_because = f"no ready replica to share {scaling.signal} among"
            else:
                value, unknown_because = (raw / ready if query.total else raw), None
        activity = signals.known(url, signals.activity_query(series, scaling.window_seconds), io.query)
        demand = signals.known(url, signals.demand_query(series), io.query)
        observation = Observation(now, replicas, ready, value, demand, None if activity is None else activity > 0)
        return observation, unknown_because

    def step(self, key: ObjectKey) -> Decision | None:
        """One decision for one service, acted on; ``None`` when it has no Deployment yet."""
        io = self.io or cluster_io()
        with self._lock:
            entry = self._tracked.get(key)
        if entry is None or entry.spec.autoscaling is None:
            return None
        deployment = io.read_deployment(key.namespace, key.name)
        if deployment is None:
            return None
        now = self.clock()
        observed, unknown_because = self._observe(io, entry, deployment, now)
        decision = decide(PolicyConfig.from_spec(entry.spec.autoscaling), observed, entry.state)
        entry.state = decision.state
        scaling = entry.spec.autoscaling
        metrics.record_scale(key.namespace, key.name, scaling.signal, observed.value, decision.desired,
                             observed.ready, observed.replicas, decision.direction, decision.reason,
                             target=scaling.target)  # fmt: skip
        changed = decision.desired != observed.replicas
        news = (changed or entry.last_decision is None or entry.last_decision["reason"] != decision.reason
                or entry.unknown_because != unknown_because)  # fmt: skip
        entry.last_decision = {"from": observed.replicas, "to": decision.desired, "reason": decision.reason}
        entry.unknown_because = unknown_because
        if decision.direction == "down":
            self._prefer_idle_pods(io, entry)
        if changed:
            with REPLICAS_LOCK:
                io.set_replicas(key.namespace, key.name, decision.desired)
            entry.last_scale_time = format_time(datetime.fromtimestamp(now, UTC))
        if news or now - entry.last_status_at >= STATUS_EVERY_SECONDS:
            entry.last_status_at = now
            self._write_status(io, entry, observed, decision, unknown_because)
        if changed:  # last: a refused event (say, a namespace being deleted) loses nothing else
            shown = "unknown" if observed.value is None else f"{observed.value:.3g}"
            io.post_event(
                entry.involved(),
                f"Scaled{'Up' if decision.direction == 'up' else 'Down'}",
                f"{observed.replicas} -> {decision.desired} replicas: {decision.reason}"
                f" ({scaling.signal} {shown}, target {scaling.target:g})",
            )
        return decision

    def _prefer_idle_pods(self, io: Io, entry: Tracked) -> None:
        """Before a scale-down, price each replica by its load so the least-loaded go first (Triton #6230)."""
        scaling = entry.spec.autoscaling
        assert scaling is not None
        url = scaling.prometheus.url if scaling.prometheus else self.prometheus_url
        if url is None:
            return
        series = signals.Series(entry.key.namespace, entry.key.name, entry.spec.model.name)
        for pod, load in io.load_by_pod(url, signals.load_by_pod_query(series, scaling.window_seconds)).items():
            io.set_deletion_cost(entry.key.namespace, pod, round(load * 1000))

    def _write_status(self, io: Io, entry: Tracked, observed: Observation, decision: Decision,
                      unknown_because: str | None) -> None:
        """``status.autoscaling`` and, when it changed, the ``ScalingActive`` condition.

        The condition is merged into the conditions the object has now, and the
        write requires that resourceVersion: a conflict (the reconciler wrote in
        between) leaves the write to the next round, never overwrites.
        """
        status = self._status(entry, observed.value, decision.desired)
        service = io.read_service(entry.key.namespace, entry.key.name)
        if service is None:
            return
        metadata, stored = service.get("metadata") or {}, service.get("status") or {}
        held_because = (unknown_because or "no value") if decision.reason == SIGNAL_UNKNOWN else None
        condition = scaling_status.scaling_active(decision.reason, held_because, decision.desired,
                                                  int(metadata.get("generation") or 0))  # fmt: skip
        conditions = scaling_status.merged(stored.get("conditions"), condition, format_time(datetime.fromtimestamp(self.clock(), UTC)))
        if conditions is None:
            io.patch_status(entry.key.namespace, entry.key.name, status, None)
            return
        try:
            io.patch_status(entry.key.namespace, entry.key.name, {**status, "conditions": conditions},
                            metadata.get("resourceVersion"))  # fmt: skip
        except kube.WriteConflict:
            entry.last_status_at = float("-inf")  # the next round writes it again
            io.patch_status(entry.key.namespace, entry.key.name, status, None)

    @staticmethod
    def _status(entry: Tracked, value: float | None, desired: int) -> dict[str, Any]:
        scaling = entry.spec.autoscaling
        assert scaling is not None
        autoscaling: dict[str, Any] = {
            "signal": scaling.signal,
            "value": value,  # None removes it in the merge patch: unknown is absent, never 0
            "target": scaling.target,
            "lastDecision": entry.last_decision,
        }
        if entry.last_scale_time is not None:
            autoscaling["lastScaleTime"] = entry.last_scale_time
        return {"desiredReplicas": desired, "autoscaling": autoscaling}

    async def round(self, logger: Logger) -> None:
        """Step every tracked service once, side by side."""

        async def one(key: ObjectKey) -> None:
            try:
                await asyncio.to_thread(self.step, key)
            except Exception as error:  # one service's failure never stops the others
                logger.warning(f"autoscaling {key.namespace}/{key.name} failed: {type(error).__name__}: {error}")

        await asyncio.gather(*(one(key) for key in self.tracked()))

    async def run(self, interval: float, logger: Logger) -> None:
        """Rounds forever, every ``interval`` seconds (a slow round delays the next, never overlaps it)."""
        while True:
            started = time.monotonic()
            await self.round(logger)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


AUTOSCALER = Autoscaler()
