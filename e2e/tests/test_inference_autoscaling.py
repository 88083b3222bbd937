"""The autoscaler end to end: real Prometheus, Triton simulators per Ready replica, a tritonclient load step.

The figures (seconds from the step to the decision and to the new replicas
serving) are printed, not asserted tightly: this machine is shared; the
bound asserted is the target (decision within 15 s of the step).

Scale from zero: a local ``lepton-operator activator`` plays the activator pods
(``localcluster.activation``) in front of a stand-in for the ``<name>-triton``
Service, whose endpoints are the Ready replicas' simulators.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import serving_fixtures
from localcluster.activation import ServiceStandIn, start_activator
from localcluster.kube import Kubectl, wait_until
from localcluster.serving import Load, Prometheus, Replicas, infer
from operator_fixtures import RunningOperator
from serving_fixtures import MODEL, SERVICE_TIME_MS, apply_autoscaled, promql

pytestmark = pytest.mark.e2e

DECISION_TARGET_SECONDS = 15.0


def replicas_of(kubectl: Kubectl, name: str = "auto") -> int:
    count: int = serving_fixtures.replicas_of(kubectl, name)
    return count


def test_operator_inference_scales_up_and_down_on_a_load_step(
    lepton_operator: RunningOperator, kubectl: Kubectl, namespace: str, repository: Path, prometheus: Prometheus
) -> None:
    selector = apply_autoscaled(kubectl, "auto", prometheus, minReplicas=1, maxReplicas=4, signal="concurrency",
                                target=0.5, windowSeconds=10, scaleDownStabilizationSeconds=15)  # fmt: skip

    load = Load(MODEL, lambda: np.ones((1, 4), dtype=np.float32))
    harness = Replicas(lambda: kubectl.get("pods", None, "-l", selector), namespace=namespace, service="auto",
                       model=MODEL, repository=repository, prometheus=prometheus, load=load,
                       service_time_ms=SERVICE_TIME_MS)  # fmt: skip
    threads = [threading.Thread(target=harness.run, daemon=True), threading.Thread(target=load.run, daemon=True)]
    for thread in threads[:1]:
        thread.start()
    try:
        wait_until(lambda: load.targets, 90, "the first replica serving")
        load.rate = 3.0  # 0.3 requests in the server: one replica is enough
        threads[1].start()
        wait_until(lambda: promql(prometheus, f'nv_inference_request_success{{service="auto",namespace="{namespace}"}}'),
                   30, "Prometheus scraping the replica")  # fmt: skip
        time.sleep(10)  # a steady low phase: the autoscaler must hold at one replica
        assert replicas_of(kubectl) == 1

        load.rate = 18.0  # 1.8 in the server at the service time: 4 replicas' worth at the target
        step = time.monotonic()
        wait_until(lambda: replicas_of(kubectl) > 1, 60, "a scale-up decision")
        decided = time.monotonic() - step
        wait_until(lambda: len(load.targets) == 4, 120, "four replicas serving")
        serving = time.monotonic() - step
        print(f"\nstep -> decision {decided:.1f} s, step -> 4 replicas serving {serving:.1f} s")
        assert decided <= DECISION_TARGET_SECONDS
        time.sleep(5)

        load.rate = 2.0
        down, failed_before_down = time.monotonic(), load.failed
        wait_until(lambda: replicas_of(kubectl) == 1, 120, "scale-down to one replica")
        wait_until(lambda: len(load.targets) == 1, 60, "three replicas retired")
        print(f"low load -> back to one replica {time.monotonic() - down:.1f} s")
        kept = [p for p in kubectl.get("pods", None, "-l", selector) if not p["metadata"].get("deletionTimestamp")]
        annotations = kept[0]["metadata"].get("annotations", {})
        assert "controller.kubernetes.io/pod-deletion-cost" in annotations  # priced by load before scale-down
        time.sleep(3)
    finally:
        load.stop()
        harness.stop()
    print(f"requests: {load.succeeded} succeeded, {load.failed} failed (before scale-down: {failed_before_down})")
    assert load.failed == failed_before_down, load.errors[-5:]  # zero failed requests during scale-down
    assert failed_before_down == 0, load.errors[:5]  # nor while one replica was overloaded before scale-up
    assert load.succeeded > 100
    events = kubectl.get("events", None, "--field-selector", "involvedObject.name=auto")
    reasons = [e["reason"] for e in events if e["reason"] in ("ScaledUp", "ScaledDown")]
    assert "ScaledUp" in reasons and "ScaledDown" in reasons


def test_operator_inference_scales_from_zero_on_a_request_the_activator_holds(
    lepton_operator: RunningOperator, kubectl: Kubectl, namespace: str, repository: Path, prometheus: Prometheus,
    tmp_path: Path,
) -> None:
    selector = apply_autoscaled(kubectl, "zero", prometheus, minReplicas=0, maxReplicas=2, signal="pendingRequests",
                                target=4, windowSeconds=5, scaleToZeroAfterSeconds=5)  # fmt: skip
    # In the cluster: the public Service turns to the activator pods once one is Ready; Triton's is behind it.
    wait_until(lambda: kubectl.get("service", "zero")["spec"]["selector"]["lepton.ai/role"] == "activator", 90,
               "the Service in front of the activator")  # fmt: skip
    assert kubectl.get("service", "zero-triton")["spec"]["selector"] == {"lepton.ai/inferenceservice": "zero",
                                                                         "lepton.ai/role": "server"}  # fmt: skip
    assert kubectl.get("deployment", "zero-activator")["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "lepton-operator", "activator"]  # fmt: skip

    # On this machine: the activator's data plane in front of a stand-in for Service zero-triton.
    backend = ServiceStandIn()
    activator = start_activator(f"http://127.0.0.1:{backend.port}", tmp_path / "activator.log")
    load = Load(MODEL, lambda: np.ones((1, 4), dtype=np.float32))  # no traffic: its targets are the ready replicas
    harness = Replicas(lambda: kubectl.get("pods", None, "-l", selector), namespace=namespace, service="zero",
                       model=MODEL, repository=repository, prometheus=prometheus, load=load,
                       service_time_ms=SERVICE_TIME_MS, backend=backend,
                       also_scrape=[activator.scrape_group(namespace, "zero")])  # fmt: skip
    thread = threading.Thread(target=harness.run, daemon=True)
    thread.start()
    answer: dict[str, Any] = {}
    try:
        wait_until(lambda: load.targets, 90, "the first replica serving")
        wait_until(lambda: replicas_of(kubectl, "zero") == 0, 90, "scale to zero after 5 idle seconds")
        wait_until(lambda: not load.targets, 60, "the replica retired")
        held = f'lepton_activator_pending_requests{{namespace="{namespace}",service="zero"}}'
        wait_until(lambda: promql(prometheus, held), 30, "Prometheus scraping the activator")

        def request() -> None:
            try:
                answer["output"] = infer(activator.address, MODEL, np.full((1, 4), 3.0, dtype=np.float32), timeout=180)
            except Exception as error:  # noqa: BLE001 - asserted below
                answer["error"] = error

        sender = threading.Thread(target=request, daemon=True)
        sender.start()  # at zero replicas: held by the activator, seen by the autoscaler as demand
        wait_until(lambda: activator.pending() == 1, 30, "the request held by the activator")
        wait_until(lambda: replicas_of(kubectl, "zero") >= 1, 60, "a scale-up from zero")
        sender.join(180)
        assert not sender.is_alive() and "error" not in answer, answer
        assert answer["output"].tolist() == [[6.0] * 4]
        assert activator.pending() == 0
    finally:
        harness.stop()
        activator.stop()
        backend.close()
    events = kubectl.get("events", None, "--field-selector", "involvedObject.name=zero,reason=ScaledUp")
    assert any(e["message"].startswith("0 -> 1 replicas: PendingDemand") for e in events), [e["message"] for e in events]
