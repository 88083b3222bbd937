"""Chaos: the dependencies the operator reads go down, and what it does meanwhile is checked.

Prometheus stopped under an autoscaled load. Invariant: the replicas are held,
never scaled down on missing data (an autoscaler that reads a failed query as
zero, KEDA's trap, drops the replicas the load still needs); the
``ScalingActive`` condition says why (False, ``SignalUnknown``, Prometheus'
error); once Prometheus is back the service converges to what its real load
asks, and the time that takes is printed.

Real parts: the operator's autoscaler, a real Prometheus process (stopped with
SIGTERM, started again on the same port and data), Triton-protocol simulators
for the kwok replicas (``localcluster.serving.Replicas``) and an open-loop
tritonclient load.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from localcluster.kube import Kubectl, wait_until
from localcluster.serving import Load, Prometheus, Replicas
from operator_fixtures import RunningOperator
from serving_fixtures import MODEL, SERVICE_TIME_MS, model_spec, replicas_of

pytestmark = pytest.mark.e2e

NAME = "held"
STABILIZATION_SECONDS = 10


def scaling_active(kubectl: Kubectl) -> dict[str, Any]:
    conditions = kubectl.get("lis", NAME).get("status", {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "ScalingActive"), {})


def test_prometheus_down_under_load_holds_the_replicas_says_why_and_converges_once_back(
    lepton_operator: RunningOperator, kubectl: Kubectl, namespace: str, repository: Path, prometheus: Prometheus
) -> None:
    spec = {
        "model": model_spec(),
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "signal": "concurrency", "target": 0.5,
                        "windowSeconds": 6, "scaleDownStabilizationSeconds": STABILIZATION_SECONDS,
                        "prometheus": {"url": prometheus.url}},
    }  # fmt: skip
    kubectl.apply({"apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService", "metadata": {"name": NAME},
                   "spec": spec}, "--server-side")  # fmt: skip
    selector = wait_until(lambda: kubectl.get("lis", NAME).get("status", {}).get("selector"), 60, "status.selector")
    load = Load(MODEL, lambda: np.ones((1, 4), dtype=np.float32))
    harness = Replicas(lambda: kubectl.get("pods", None, "-l", selector), namespace=namespace, service=NAME,
                       model=MODEL, repository=repository, prometheus=prometheus, load=load,
                       service_time_ms=SERVICE_TIME_MS)  # fmt: skip
    threading.Thread(target=harness.run, daemon=True).start()
    try:
        wait_until(lambda: load.targets, 90, "the first replica serving")
        load.rate = 14.0  # 1.4 requests in the servers at 100 ms: three replicas' worth at the target
        threading.Thread(target=load.run, daemon=True).start()
        wait_until(lambda: len(load.targets) == 3, 120, "three replicas serving the load")
        wait_until(lambda: scaling_active(kubectl).get("status") == "True", 60, "ScalingActive on a known signal")

        prometheus.stop()
        stopped = time.monotonic()
        load.rate = 0.5  # what is left would fit one replica: known data would scale down
        wait_until(lambda: scaling_active(kubectl).get("reason") == "SignalUnknown", 30,
                   "ScalingActive False: the signal is unknown")  # fmt: skip
        down = scaling_active(kubectl)
        print(f"\nPrometheus stopped -> condition {time.monotonic() - stopped:.1f} s: {down['message']}")
        assert down["status"] == "False"
        assert down["message"].startswith("holding 3 replicas: the signal is unknown (Prometheus failed: ")
        assert "Connection refused" in down["message"], down["message"]
        # Three stabilization windows of low load, unseen: the count must not move once.
        counts = set()
        observed_until = time.monotonic() + 3 * STABILIZATION_SECONDS
        while time.monotonic() < observed_until:
            counts.add(replicas_of(kubectl, NAME))
            time.sleep(1)
        assert counts == {3}, f"replicas moved while Prometheus was down: {sorted(counts)}"
        assert kubectl.get("lis", NAME)["status"]["autoscaling"]["lastDecision"]["reason"] == "SignalUnknown"

        prometheus.start()
        back = time.monotonic()
        wait_until(lambda: scaling_active(kubectl).get("status") == "True", 60, "ScalingActive again once it is back")
        known = time.monotonic() - back
        wait_until(lambda: replicas_of(kubectl, NAME) == 1, 90, "the low load's one replica")
        print(f"Prometheus back -> signal known {known:.1f} s, -> scaled down to 1 {time.monotonic() - back:.1f} s")
    finally:
        load.stop()
        harness.stop()
    assert load.failed == 0, load.errors[:5]
    events = kubectl.get("events", None, "--field-selector", f"involvedObject.name={NAME},reason=ScaledDown")
    messages = [e["message"] for e in events]
    assert messages and all(m.startswith("3 -> ") and "SignalUnknown" not in m for m in messages), messages
