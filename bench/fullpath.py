"""The full path on real pods, timed: apply -> first inference by stage, DDP on pods, serving latency.

    make setup && PYTHONPATH=e2e .venv/bin/python bench/fullpath.py [--seconds 20] [--concurrency 4]

On the local cluster (brought up and set up as ``make demo`` does: images, CRDs, the in-cluster
operator, Prometheus), in a fresh namespace, one run each:

1. ``stages``: ``kubectl apply`` of the shipped quickstart -> the first successful inference,
   split by stage: prepare (-> dataset Ready), schedule (-> every worker Running), train (->
   Succeeded), stage model (-> the replica's ``stage-model`` init container done), ready (-> the
   InferenceService Ready), first inference.
2. ``ddp``: the quickstart's trainer (same arguments, same prepared shards) as TrainingJobs of 1
   and of 2 worker pods, and as plain ``torchrun`` processes here on a copy of the shards:
   samples/s from the trainer's own final report (steps x batch x world / training seconds),
   2 workers / 1 worker, and pods / local processes at the same world size.
3. ``serving``: closed-loop clients at a fixed concurrency through the Service (a forwarder into
   the cluster's network to its ClusterIP, kube-proxy, the pod) and against a simulator process
   here serving the same export with the same service time: p50/p99 latency and throughput.
   Autoscaling is off for this part (one replica), so both sides have the same capacity.

The machines have 2 cores shared by everything, so the ratios are the figures; absolute ones
move with load. Prints and writes ``bench/results/fullpath.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import localcluster
from localcluster.lepton import REPO, free_port, http_ok
from localcluster.paths import state_dir
from localcluster.quickstart import DATASET, JOB, SERVICE, Quickstart, install_platform, sample_images, stage_times
from localcluster.serving import closed_loop

RESULTS = REPO / "bench" / "results" / "fullpath.json"


def print_stage(name: str, seconds: float) -> None:
    print(f"  {name}: {seconds} s", flush=True)


def trainer_report(logs: str) -> dict[str, Any]:
    """The trainer's last progress line (rank 0 prints one JSON document per report)."""
    reports: list[dict[str, Any]] = [json.loads(line) for line in logs.splitlines() if line.startswith("{") and '"step"' in line]
    return reports[-1]


def samples_per_second(report: dict[str, Any], batch: int, world: int) -> float:
    return float(report["step"] - report.get("resumedFrom", 0)) * batch * world / float(report["seconds"])


def finished(run: Quickstart, name: str) -> bool:
    return run.status("trainingjobs", name).get("phase") in ("Succeeded", "Failed")


def ddp(run: Quickstart, workdir: Path) -> dict[str, Any]:
    """Samples/s of the quickstart's trainer: 1 vs 2 worker pods, and pods vs local processes."""
    example = next(d for d in run.kubectl.get("trainingjobs") if d["metadata"]["name"] == JOB)
    args = list(example["spec"]["entrypoint"]["args"])
    batch = int(args[args.index("--batch-size") + 1])
    found: dict[str, Any] = {}
    for workers in (1, 2):
        name = f"bench-ddp-{workers}"
        job = {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
               "spec": {**{k: v for k, v in example["spec"].items() if k not in ("checkpoint", "output", "runPolicy")},
                        "workers": {**example["spec"]["workers"], "replicas": workers}}}  # fmt: skip
        run.kubectl.apply(job, "--server-side")
        run.wait(functools.partial(finished, run, name), 1200, f"{name} to finish")
        assert run.status("trainingjobs", name)["phase"] == "Succeeded", run.status("trainingjobs", name)
        report = trainer_report(run.kubectl("logs", f"{name}-worker-0-g0"))
        found[f"pods_{workers}"] = round(samples_per_second(report, batch, workers), 1)
        print(f"  {workers} worker pod(s): {found[f'pods_{workers}']} samples/s", flush=True)
    # The same trainer as plain processes here, on a copy of the same shards.
    dataset = run.status("leptondatasets", DATASET)
    manifest = json.loads(run.read_claim(dataset["claimName"], ["manifest.json"])["manifest.json"])
    files = run.read_claim(dataset["claimName"], ["manifest.json", *[s["name"] for s in manifest["shards"]]])
    data = workdir / "data"
    for path, content in files.items():
        (data / path).parent.mkdir(parents=True, exist_ok=True)
        (data / path).write_bytes(content)
    for workers in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
                   "-m", "lepton_workloads.train", "--dataset-dir", str(data), *args]  # fmt: skip
        env = {**os.environ, "LEPTON_PROGRESS_PORT": "0", "LEPTON_TERMINATION_LOG": str(workdir / f"term-{workers}")}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800, check=True)
        found[f"local_{workers}"] = round(samples_per_second(trainer_report(done.stdout), batch, workers), 1)
        print(f"  {workers} local process(es): {found[f'local_{workers}']} samples/s", flush=True)
    found["pods_2_over_1"] = round(found["pods_2"] / found["pods_1"], 2)
    found["local_2_over_1"] = round(found["local_2"] / found["local_1"], 2)
    found["pods_over_local_at_2"] = round(found["pods_2"] / found["local_2"], 2)
    return found


def serving(run: Quickstart, workdir: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """Closed-loop latency and throughput through the Service vs a simulator process here."""
    run.kubectl("patch", "lis", SERVICE, "--type=merge", "-p", json.dumps({"spec": {"autoscaling": None, "replicas": 1}}))
    run.wait(lambda: run.replicas()[1:] == (1, 1), 300, "one replica, autoscaling off")
    _, images = sample_images(1, seed=7)
    exported = run.export()
    repository = workdir / "models"
    (repository / JOB / "1").mkdir(parents=True)
    (repository / JOB / "config.pbtxt").write_bytes(exported["config.pbtxt"])
    (repository / JOB / "1" / "model.pt").write_bytes(exported["model.pt"])
    http_port, metrics_port = free_port(), free_port()
    direct = subprocess.Popen([sys.executable, "-m", "lepton_workloads.triton_simulator", f"--model-repository={repository}",
                               f"--model={JOB}", f"--http-port={http_port}", f"--metrics-port={metrics_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        run.wait(lambda: http_ok(f"http://127.0.0.1:{http_port}/v2/models/{JOB}/ready"), 120, "the local simulator")
        results = {}
        sides = (("service", run.service_address(), "quickstart", run.key_headers()), ("direct", f"127.0.0.1:{http_port}", JOB, None))
        for side, address, model, headers in sides:
            closed_loop(address, model, lambda: images, concurrency, 3.0, headers)  # warm up
            measured = closed_loop(address, model, lambda: images, concurrency, seconds, headers)
            results[side] = {"p50_ms": round(measured.percentile(0.5) * 1000, 1), "p99_ms": round(measured.percentile(0.99) * 1000, 1),
                             "rps": round(measured.throughput, 1), "failed": measured.failed, "requests": len(measured.latencies)}  # fmt: skip
            print(f"  {side}: {results[side]}", flush=True)
    finally:
        direct.terminate()
        direct.wait(10)
    ratios = {f"service_over_direct_{k}": round(results["service"][k] / results["direct"][k], 2) for k in ("p50_ms", "p99_ms", "rps")}
    return {"concurrency": concurrency, "seconds": seconds, **results, **ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each serving measurement")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    cluster = localcluster.up()
    built, _ = install_platform(cluster, state_dir() / "bench")
    run = Quickstart(cluster, f"bench-fullpath-{uuid.uuid4().hex[:6]}", built)
    document: dict[str, Any] = {"shape": "quickstart: 600 records, 2 worker pods (1 process each, gloo, CPU), "
                                         "1-3 Triton-protocol replicas; local cluster, one real node, 2 cores"}  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as scratch:
            print("stages (cumulative seconds from the apply):", flush=True)
            document["stages"] = stage_times(run, on_stage=print_stage)
            print("DDP samples/s:", flush=True)
            document["ddp"] = ddp(run, Path(scratch))
            print("serving:", flush=True)
            document["serving"] = serving(run, Path(scratch), args.concurrency, args.seconds)
    finally:
        run.stop()
        cluster.kubectl().delete("namespace", run.namespace)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
