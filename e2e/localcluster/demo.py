"""``make demo``: the platform on the built-in local cluster, the quickstart run for real, end to end.

Steps, each idempotent so the command can be run again: bring the cluster up (building the pinned
binaries and the images on first use), install the CRDs and the operator as users do
(``kubectl apply -k`` of the local overlay: two replicas on the real node, ``incluster``),
start the cluster's Prometheus (``monitoring``), then apply the shipped quickstart into
``lepton-demo`` and follow it (``quickstart``): the dataset prepared by the real preparer, the
DDP job's progress across its two worker pods, a sample inference through the Service, and the
replica count following a load step. Phase changes of ``kubectl get lepton`` are printed as they
happen. The cluster is left running; the end says how to look at it and how to stop it
(``make down``, which stops everything and deletes the cluster).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import localcluster
from localcluster.lepton import REPO
from localcluster.paths import state_dir
from localcluster.quickstart import JOB, SERVICE, Quickstart, install_platform, sample_images
from lepton_workloads import demo_data

Say = Callable[[str], None]

NAMESPACE = "lepton-demo"
LOAD_RPS = 30.0
LOAD_SECONDS = 60.0


def _marker() -> Path:
    return state_dir() / "demo.running"


def demo_running() -> bool:
    """Whether ``make demo`` left its operator and quickstart on the cluster (the e2e suite keeps them)."""
    return _marker().exists()


class Printer:
    """``on_poll`` of the demo: phase changes, training progress and replica counts as they change."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.shown: dict[str, object] = {}

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.0f} s] {text}", flush=True)

    def changed(self, key: str, value: object) -> bool:
        if self.shown.get(key) == value:
            return False
        self.shown[key] = value
        return True

    def __call__(self, run: Quickstart) -> None:
        phases = run.phases()
        if self.changed("phases", phases):
            self.say("  ".join(f"{name}: {phase}" for name, phase in phases.items()))
        progress = run.training().get("progress") or {}
        if progress and self.changed("progress", progress.get("step")):
            resumed = f", resumed from step {progress['resumedFrom']}" if progress.get("resumedFrom") else ""
            self.say(f"  {JOB}: step {progress.get('step')}, epoch {progress.get('epoch')}, loss {progress.get('loss')}{resumed}")
        if phases.get(f"inferenceservice/{SERVICE}") not in (None, "-"):
            desired, wanted, ready = run.replicas()
            if self.changed("replicas", (desired, ready)):
                self.say(f"  {SERVICE}: {ready} ready replica(s), autoscaler wants {desired} (Deployment: {wanted})")


def up() -> int:
    printer = Printer()
    say = printer.say
    cluster = localcluster.up()
    kubectl = cluster.kubectl()
    say("images, CRDs, the operator (kubectl apply -k manifests/overlays/local: 2 replicas, one acts), Prometheus")
    _marker().write_text("")
    built, prometheus = install_platform(cluster, state_dir() / "demo")
    run = Quickstart(cluster, NAMESPACE, built, on_poll=printer)
    say(f"applying manifests/examples/quickstart.yaml in namespace {NAMESPACE}")
    run.apply()
    dataset = run.dataset_ready()
    say(f"dataset Ready: {dataset['records']} records, {dataset['shards']} shards, {dataset['sizeBytes']} bytes, "
        f"manifest {dataset['digest']}")  # fmt: skip
    job = run.training_reaches(lambda s: s.get("phase") == "Succeeded", 900, "the training job to succeed")
    say(f"training Succeeded at step {job['progress']['step']} (loss {job['progress'].get('loss')}), "
        f"model exported to {job['output']['uri']}")  # fmt: skip
    run.serving_ready()
    sample_inference(run, say)
    load_step(run, say)
    print(kubectl.in_namespace(NAMESPACE)("get", "lepton"))
    kubectl_path = cluster.kubectl_binary
    print(
        f"Lepton is running ({time.monotonic() - printer.started:.0f} s). The cluster stays up:\n"
        f"  export KUBECONFIG={cluster.kubeconfig}\n"
        f"  {kubectl_path} get lepton -n {NAMESPACE}\n"
        f"  {kubectl_path} describe lis {SERVICE} -n {NAMESPACE}     (every scale decision is an event)\n"
        f"  {kubectl_path} get networkpolicy -n {NAMESPACE}     (each object's isolation; README, Security)\n"
        f"  calls to the model send its API key (README, Calling a protected model); where it is:\n"
        f"    {kubectl_path} get lis {SERVICE} -n {NAMESPACE} -o jsonpath='{{.spec.auth}}'\n"
        f"  Prometheus: {prometheus.url}  (Triton's signals and the operator's lepton_* metrics; e.g. "
        f"{prometheus.url}/graph?g0.expr=lepton_inference_replicas)\n"
        f"  Grafana dashboard: import {REPO / 'manifests/dashboards/lepton.json'} with that Prometheus as its data source\n"
        f"  operator logs: {kubectl_path} logs -n lepton-system deployment/lepton-operator\n"
        "  stop everything: make down"
    )
    return 0


def sample_inference(run: Quickstart, say: Say) -> None:
    """One image of each class, classified by the served model through the Service."""
    labels, images = sample_images(3, seed=12345)
    names = sorted(demo_data.CLASSES)  # the labels in the manifest's order
    guesses = [names[i] for i in run.infer(images).argmax(axis=1)]
    pairs = ", ".join(f"a {label} -> {guess}" for label, guess in zip(labels, guesses, strict=True))
    key = run.api_key()
    say(f"sample inference through the Service{f' with its API key (header {key.header})' if key else ''}: {pairs}")


def load_step(run: Quickstart, say: Say) -> None:
    """Requests at a steady rate for a while, then none: the replicas follow."""
    _, images = sample_images(1, seed=1)
    load = run.load(lambda: images)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    say(f"load step: {LOAD_RPS:.0f} requests/s through the Service for {LOAD_SECONDS:.0f} s")
    load.rate = LOAD_RPS
    end = time.monotonic() + LOAD_SECONDS
    run.wait(lambda: time.monotonic() >= end, LOAD_SECONDS + 30, "the load step")
    load.rate = 0.0
    say(f"load stopped ({load.succeeded} requests served, {load.failed} failed); waiting for the scale-down")
    run.wait(lambda: run.replicas() == (1, 1, 1), 300, "the service back at one replica")
    load.stop()
    thread.join(10)
    decision = (run.status("inferenceservices", SERVICE).get("autoscaling") or {}).get("lastDecision") or {}
    say(f"back at one replica; last decision {decision.get('from')} -> {decision.get('to')}: {decision.get('reason')}")


def down() -> int:
    _marker().unlink(missing_ok=True)
    existed = localcluster.down()
    print("local cluster deleted" if existed else "no local cluster was running")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.demo", description=__doc__)
    parser.add_argument("action", choices=("up", "down"))
    args = parser.parse_args(argv)
    return up() if args.action == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
