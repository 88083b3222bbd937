"""What the security costs: serving latency and throughput, and the full path, with and without it.

    make setup && PYTHONPATH=operator:workloads:e2e .venv/bin/python bench/security_overhead.py \\
        [--seconds 20] [--concurrency 1 4] [--rounds 2] [--skip-full-path]

On the local cluster (brought up and set up as ``bench/fullpath.py`` does: images, CRDs, the
in-cluster operator, Prometheus), one run, fresh namespaces:

1. ``full_path``: the shipped quickstart, ``kubectl apply`` -> first inference
   (``quickstart.stage_times``), as shipped (every object's NetworkPolicy on, the service behind
   its API key) and then with ``networkPolicy: {enabled: false}`` on the dataset, the job and the
   service and no ``auth`` (the objects edited in memory, not the file). One sample each, each in
   its own namespace, the first deleted before the second starts.
2. ``serving``: ``served_model``'s tiny model, one Triton-protocol simulator replica per
   InferenceService (20 ms per request, one at a time: the simulator's defaults under the
   ``tritonserver`` command line), four services side by side in one namespace:

   ======== ============================ =============================
   variant  spec                         measured over
   ======== ============================ =============================
   open     ``networkPolicy.enabled:     HTTP, gRPC, HTTP with a new
            false``, no key, no TLS      connection per request
   isolated policy on (the default)      HTTP, HTTP new connection
   keyed    policy + ``auth``            HTTP, gRPC
   tls      policy + ``auth`` + ``tls``  gRPC (TLS)
   ======== ============================ =============================

   The load runs **in a pod** of the same namespace (``closed_loop_client``, mounted from a
   ConfigMap, run with ``kubectl exec``; the key from the Secret by ``secretKeyRef``): kube-router,
   the local cluster's enforcer, admits everything from the node, so a host client would neither
   pay for nor test the policy. Each measurement is ``--concurrency`` closed loops for
   ``--seconds`` after a short warm-up, against the Service's DNS name (kube-proxy, then the pod).
   At 1 client the latency is the service time plus what each request pays on the way (the
   security's cost shows there); at 4 the replica's queue (4 x 20 ms) dominates the latency and
   throughput is the replica's capacity, so a cost shows only if it takes that capacity.
   The measurements run in rounds, each round every measurement once in the same order, so
   machine noise spreads over all of them; per measurement the figures are the mean over rounds.
   Ratios: each against the open service over the same protocol and connection use; TLS also
   against the keyed service over gRPC (the cost of TLS alone).

The machine has 2 cores shared by the cluster, the operator, the servers and the client, so the
ratios are the figures. Prints a table and writes ``bench/results/security_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import localcluster
from localcluster import closed_loop_client
from localcluster.certificates import make_certificates, tls_secret
from localcluster.handle import Cluster
from localcluster.images import Image
from localcluster.kube import Kubectl, condition_true, wait_until
from localcluster.lepton import REPO
from localcluster.paths import state_dir
from localcluster.quickstart import HARDENED, KINDS, Quickstart, install_platform, stage_times
from localcluster.served_model import MODEL, inference_service, key_secret, model_configmap, model_server
from lepton_operator.render.inference import GRPC_PORT, HTTP_PORT

RESULTS = REPO / "bench" / "results" / "security_overhead.json"
#: The simulator's service time under the ``tritonserver`` command line (its ``--service-time-ms`` default).
SERVICE_TIME_MS = 20.0
KEY_SECRET, TLS_SECRET = "bench-key", "bench-tls"
CLIENT, CLIENT_FILES, CLIENT_DIR = "load-client", "load-client", "/load"
CA_FILE = "ca.pem"
READY_TIMEOUT = 300.0


@dataclass(frozen=True)
class Variant:
    """One InferenceService of the comparison: its name says what it has on."""

    name: str
    network_policy: bool
    key: bool
    tls: bool

    def manifest(self, simulator: str) -> dict[str, Any]:
        return inference_service(self.name, simulator, network_policy=self.network_policy,
                                 key=KEY_SECRET if self.key else None, tls=TLS_SECRET if self.tls else None)  # fmt: skip


OPEN = Variant("open", network_policy=False, key=False, tls=False)
ISOLATED = Variant("isolated", network_policy=True, key=False, tls=False)
KEYED = Variant("keyed", network_policy=True, key=True, tls=False)
TLS = Variant("tls", network_policy=True, key=True, tls=True)
VARIANTS = (OPEN, ISOLATED, KEYED, TLS)


@dataclass(frozen=True)
class Measurement:
    """One load against one variant: a protocol, one connection per client or one per request."""

    variant: Variant
    protocol: str  # "http" or "grpc"
    reconnect: bool = False

    @property
    def label(self) -> str:
        return f"{self.variant.name} {self.protocol}" + (" new-conn" if self.reconnect else "")

    def client_args(self, namespace: str, concurrency: int, seconds: float) -> list[str]:
        """``closed_loop_client``'s command line for this load, from the client pod."""
        port = GRPC_PORT if self.protocol == "grpc" else HTTP_PORT
        argv = ["--protocol", self.protocol, "--address", f"{self.variant.name}.{namespace}.svc:{port}", "--model", MODEL,
                "--concurrency", str(concurrency), "--seconds", str(seconds)]  # fmt: skip
        if self.variant.key:
            argv += ["--key-header", "lepton-api-key"]
        if self.variant.tls and self.protocol == "grpc":
            argv += ["--ca", f"{CLIENT_DIR}/{CA_FILE}"]
        if self.reconnect:
            argv.append("--reconnect")
        return argv


#: Every measurement of a round, in run order, and what each is compared with (the same protocol
#: and connection use without the security; TLS with the keyed service over gRPC too).
MEASUREMENTS = (
    Measurement(OPEN, "http"), Measurement(ISOLATED, "http"), Measurement(KEYED, "http"),
    Measurement(OPEN, "grpc"), Measurement(KEYED, "grpc"), Measurement(TLS, "grpc"),
    Measurement(OPEN, "http", reconnect=True), Measurement(ISOLATED, "http", reconnect=True),
)  # fmt: skip
BASELINES = {m: [b for b in MEASUREMENTS if b.variant == OPEN and (b.protocol, b.reconnect) == (m.protocol, m.reconnect)]
             + ([Measurement(KEYED, "grpc")] if m.variant == TLS else []) for m in MEASUREMENTS if m.variant != OPEN}  # fmt: skip


def client_pod(image: str) -> dict[str, Any]:
    """A pod of the workloads image that waits for ``kubectl exec``: the client file and CA at
    :data:`CLIENT_DIR`, the API key in ``closed_loop_client.KEY_ENV`` from its Secret."""
    key = {"secretKeyRef": {"name": KEY_SECRET, "key": "apiKey"}}
    container = {"name": "load", "image": image, "imagePullPolicy": "Never", "securityContext": HARDENED,
                 "command": ["sleep", "infinity"], "env": [{"name": closed_loop_client.KEY_ENV, "valueFrom": key}],
                 "volumeMounts": [{"name": "files", "mountPath": CLIENT_DIR, "readOnly": True}]}  # fmt: skip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": CLIENT},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [container],
                     "volumes": [{"name": "files", "configMap": {"name": CLIENT_FILES}}]}}  # fmt: skip


def client_files(ca: Path) -> dict[str, Any]:
    source = Path(closed_loop_client.__file__).read_text()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CLIENT_FILES},
            "data": {"closed_loop_client.py": source, CA_FILE: ca.read_text()}}  # fmt: skip


def service_ready(kubectl: Kubectl, name: str) -> bool:
    found = kubectl.get_or_none("inferenceservices", name) or {}
    return condition_true(found, "Ready") and (found.get("status") or {}).get("readyReplicas") == 1


def deploy_variants(kubectl: Kubectl, images: dict[str, Image], scratch: Path) -> None:
    """The model server, the Secrets, the four services and the client pod, all Ready."""
    namespace = kubectl.namespace
    wait_until(lambda: kubectl.get_or_none("serviceaccount", "default"), 30, "the namespace's ServiceAccount")
    certificates = make_certificates(scratch, [f"DNS:{TLS.name}.{namespace}.svc", f"DNS:{TLS.name}.{namespace}.svc.cluster.local"])
    kubectl.apply(model_configmap())
    kubectl.apply(model_server(images["workloads"].ref))
    kubectl.apply(key_secret(KEY_SECRET, secrets.token_hex(16)))
    kubectl.apply(tls_secret(TLS_SECRET, certificates))
    for variant in VARIANTS:
        kubectl.apply(variant.manifest(images["triton-simulator"].ref), "--server-side")
    kubectl.apply(client_files(certificates.ca))
    kubectl.create(client_pod(images["workloads"].ref))
    for variant in VARIANTS:
        wait_until(lambda: service_ready(kubectl, variant.name), READY_TIMEOUT, f"InferenceService {variant.name} Ready")  # noqa: B023
    wait_until(lambda: condition_true(kubectl.get("pod", CLIENT), "Ready"), READY_TIMEOUT, "the client pod Ready")


def measure(kubectl: Kubectl, measurement: Measurement, concurrency: int, seconds: float) -> dict[str, Any]:
    """One closed-loop load from the client pod; the client's JSON line."""
    argv = measurement.client_args(str(kubectl.namespace), concurrency, seconds)
    output = kubectl("exec", CLIENT, "--", "python", f"{CLIENT_DIR}/closed_loop_client.py", *argv, timeout=seconds + 120)
    found: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return found


def summarize(runs: dict[Measurement, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per measurement: the means over rounds, the failures, each round, and the ratios to its baselines."""
    means = {m: {k: round(mean(r[k] for r in runs[m]), 1) for k in ("p50_ms", "p99_ms", "rps")} for m in MEASUREMENTS}
    results: dict[str, Any] = {}
    for measurement in MEASUREMENTS:
        entry: dict[str, Any] = {**means[measurement], "failed": sum(r["failed"] for r in runs[measurement]), "rounds": runs[measurement]}
        for baseline in BASELINES.get(measurement, []):
            entry[f"over {baseline.label}"] = {k: round(means[measurement][k] / means[baseline][k], 2) for k in ("p50_ms", "p99_ms", "rps")}
        results[measurement.label] = entry
    return results


def serving(cluster: Cluster, images: dict[str, Image], concurrencies: list[int], seconds: float, rounds: int) -> dict[str, Any]:
    """Every measurement at every concurrency, ``rounds`` times in turn; per concurrency :func:`summarize`."""
    namespace = f"bench-security-{uuid.uuid4().hex[:6]}"
    cluster.kubectl().create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kubectl = cluster.kubectl(namespace)
    runs: dict[int, dict[Measurement, list[dict[str, Any]]]] = {c: {m: [] for m in MEASUREMENTS} for c in concurrencies}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            deploy_variants(kubectl, images, Path(scratch))
        for round_number in range(rounds):
            for concurrency in concurrencies:
                for measurement in MEASUREMENTS:
                    found = measure(kubectl, measurement, concurrency, seconds)
                    runs[concurrency][measurement].append(found)
                    print(f"  round {round_number + 1}, {concurrency} client(s), {measurement.label}: p50 {found['p50_ms']} ms, "
                          f"p99 {found['p99_ms']} ms, {found['rps']} req/s, failed {found['failed']} {found['errors']}", flush=True)  # fmt: skip
    finally:
        cluster.kubectl().delete("namespace", namespace)
    return {f"concurrency {c}": summarize(runs[c]) for c in concurrencies}


def without_security(manifest: dict[str, Any]) -> dict[str, Any]:
    """A quickstart object with its NetworkPolicy off and, for the service, no API key."""
    if manifest.get("kind", "").lower() + "s" not in KINDS:
        return manifest
    spec = {k: v for k, v in manifest["spec"].items() if k != "auth"}
    return {**manifest, "spec": {**spec, "networkPolicy": {"enabled": False}}}


def full_path(cluster: Cluster, images: dict[str, Image]) -> dict[str, Any]:
    """The quickstart's apply -> first inference, secured as shipped, then with the security off."""
    found: dict[str, Any] = {}
    sides: tuple[tuple[str, Callable[[dict[str, Any]], dict[str, Any]] | None], ...] = (("secured", None), ("open", without_security))
    for side, edit in sides:
        run = Quickstart(cluster, f"bench-fullpath-{side}-{uuid.uuid4().hex[:6]}", images)
        print(f"  {side}:", flush=True)
        try:
            found[side] = stage_times(run, edit, on_stage=lambda name, seconds: print(f"    {name}: {seconds} s", flush=True))
        finally:
            run.stop()
            cluster.kubectl()("delete", "namespace", run.namespace, "--ignore-not-found", "--timeout=600s", timeout=660)
    found["open_over_secured"] = round(found["open"]["first inference"] / found["secured"]["first inference"], 2)
    return found


def table(results: dict[str, Any]) -> str:
    lines = ["| measurement | p50 ms | p99 ms | req/s | ratios (p50 / p99 / req/s) |", "|---|---|---|---|---|"]
    for label, entry in results.items():
        ratios = "; ".join(f"{k}: {v['p50_ms']} / {v['p99_ms']} / {v['rps']}" for k, v in entry.items() if k.startswith("over "))
        lines.append(f"| {label} | {entry['p50_ms']} | {entry['p99_ms']} | {entry['rps']} | {ratios or 'baseline'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each serving measurement (after a 3 s warm-up)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4],
                        help="closed loops of the client pod (each value measured in every round)")
    parser.add_argument("--rounds", type=int, default=2, help="times every serving measurement runs, in turn")
    parser.add_argument("--skip-full-path", action="store_true", help="serving only")
    args = parser.parse_args(argv)
    cluster = localcluster.up()
    built, _ = install_platform(cluster, state_dir() / "bench")
    document: dict[str, Any] = {"shape": {
        "machine": f"local cluster, one real node, {os.cpu_count()} cores shared by everything; load average at the start "
                   f"{os.getloadavg()[0]:.1f}",
        "cores": os.cpu_count(), "replicas": 1, "service_time_ms": SERVICE_TIME_MS, "simulator_concurrency": 1,
        "concurrency": args.concurrency, "seconds": args.seconds, "warmup_seconds": 3.0, "rounds": args.rounds,
        "order": ["full path secured", "full path open"] * (not args.skip_full_path)
                 + [f"round {r + 1}, {c} client(s): " + ", ".join(m.label for m in MEASUREMENTS)
                    for r in range(args.rounds) for c in args.concurrency],
        "client": "a pod in the services' namespace (closed_loop_client via kubectl exec), by the Service's DNS name",
        "full_path": "one sample each",
    }}  # fmt: skip
    started = time.monotonic()
    if not args.skip_full_path:
        print("full path (cumulative seconds from the apply):", flush=True)
        document["full_path"] = full_path(cluster, built)
    print("serving:", flush=True)
    document["serving"] = serving(cluster, built, args.concurrency, args.seconds, args.rounds)
    document["shape"]["wall_seconds"] = round(time.monotonic() - started)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document["shape"], indent=2))
    if "full_path" in document:
        print("full path, apply -> first inference:", {k: v if not isinstance(v, dict) else v["first inference"] for k, v in document["full_path"].items()})
    for concurrency, results in document["serving"].items():
        print(f"{concurrency}:\n{table(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
