"""TrainingJob start-up at scale: create N jobs of W single-GPU workers back to back on the local cluster.

Reports what TARGETS.md compares with Kubeflow training-operator v1.9.3: p50/p99 of the time from
the client's create call to the job's last worker pod seen Running through a watch, jobs/s, the
operator's peak RSS, and API requests per job by verb and resource (from kube-apiserver's
``apiserver_request_total``: the rows for pods and Services without subresource and for
TrainingJobs except the benchmark's creates; in this run only the operator makes those, the
scheduler and kwok write pods' binding and status subresources).

    PYTHONPATH=operator:workloads:e2e python bench/training_startup.py --jobs 100 --workers 8

It starts (or reuses) the local cluster, makes enough kwok GPU nodes (8 GPUs each), runs the
operator from this checkout as a process serving only the benchmark's namespace, and writes the
figures as JSON (``--out``). Not a test: numbers depend on the machine; always report them with
the shape of the run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import kubernetes

import localcluster
from localcluster import config
from localcluster.kube import Kubectl, wait_until
from localcluster.lepton import install_crds, start_operator


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def request_counts(kubectl: Kubectl) -> dict[tuple[str, str, str], float]:
    """``apiserver_request_total`` summed by (verb, resource, subresource)."""
    counts: dict[tuple[str, str, str], float] = {}
    for line in kubectl("get", "--raw", "/metrics", timeout=60).splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
        labels = dict(part.split("=", 1) for part in labels_text.split(",") if "=" in part)
        key = (labels.get("verb", "").strip('"'), labels.get("resource", "").strip('"'),
               labels.get("subresource", "").strip('"'))  # fmt: skip
        counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RunningWatch(threading.Thread):
    """Watches the namespace's pods; records when each job's workers are all seen Running."""

    def __init__(self, namespace: str, workers: int) -> None:
        super().__init__(daemon=True)
        self.namespace, self.workers = namespace, workers
        self.running: dict[str, set[str]] = {}
        self.done: dict[str, float] = {}
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        api = kubernetes.client.CoreV1Api()
        watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        self.ready.set()
        while not self.stop.is_set():
            for event in watch.stream(api.list_namespaced_pod, self.namespace, timeout_seconds=30,  # type: ignore[no-untyped-call]
                                      label_selector="lepton.ai/role=worker"):  # fmt: skip
                pod = event["object"]
                job = (pod.metadata.labels or {}).get("lepton.ai/trainingjob")
                if job and pod.status.phase == "Running" and job not in self.done:
                    seen = self.running.setdefault(job, set())
                    seen.add(pod.metadata.name)
                    if len(seen) >= self.workers:
                        self.done[job] = time.time()
                if self.stop.is_set():
                    watch.stop()  # type: ignore[no-untyped-call]
                    break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=Path("bench/results/training_startup.json"))
    args = parser.parse_args()

    cluster = localcluster.up()
    kubectl = cluster.kubectl()
    install_crds(kubectl)
    gpu_nodes = math.ceil(args.jobs * args.workers / 8) + 1
    started = time.time()
    localcluster.ensure_nodes(kubectl, gpu_nodes=gpu_nodes, timeout=600)
    print(f"{gpu_nodes} GPU nodes ready in {time.time() - started:.1f} s", flush=True)
    # A namespace being deleted (an earlier run's) makes API requests that would count as ours.
    wait_until(lambda: not [n for n in kubectl.get("namespaces") if n["status"].get("phase") == "Terminating"],
               300, "no namespace terminating")  # fmt: skip
    namespace = f"bench-training-{uuid.uuid4().hex[:6]}"
    kubectl.create(config.kwok_namespace(namespace))  # workers go to kwok GPU nodes
    log = Path(f"/tmp/{namespace}-operator.log")
    operator = start_operator(cluster.kubeconfig, log, extra_args=("--namespace", namespace))
    kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    watch = RunningWatch(namespace, args.workers)
    watch.start()
    watch.ready.wait()
    custom = kubernetes.client.CustomObjectsApi()
    before = request_counts(kubectl)
    created: dict[str, float] = {}
    try:
        for index in range(args.jobs):
            name = f"job-{index:04d}"
            body = {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
                    "spec": {"image": "trainer:bench", "workers": {"replicas": args.workers, "gpu": {"count": 1}}}}  # fmt: skip
            created[name] = time.time()
            custom.create_namespaced_custom_object("lepton.ai", "v1alpha1", namespace, "trainingjobs", body)
        deadline = time.time() + args.timeout
        while len(watch.done) < args.jobs and time.time() < deadline:
            time.sleep(0.5)
        after = request_counts(kubectl)
        rss = peak_rss_mb(operator.pid)
    finally:
        watch.stop.set()
        # The jobs go while the operator runs, so it releases their finalizers.
        kubectl("delete", "trainingjobs", "--all", "-n", namespace, "--wait=true", timeout=600)
        operator.stop()
        kubectl("delete", "namespace", namespace, "--wait=false")
    latencies = [watch.done[name] - created[name] for name in created if name in watch.done]
    span = max(watch.done.values()) - min(created.values()) if watch.done else float("nan")
    def operators(key: tuple[str, str, str]) -> bool:
        verb, resource, subresource = key
        if verb in ("WATCH", "WATCHLIST"):
            return False
        if resource == "trainingjobs":
            return verb != "POST"  # the benchmark's own creates
        return resource in ("pods", "services", "persistentvolumeclaims") and subresource == ""

    per_job = {"/".join(k for k in key if k): round((after.get(key, 0) - before.get(key, 0)) / args.jobs, 2)
               for key in sorted(set(after) | set(before)) if operators(key) and after.get(key, 0) > before.get(key, 0)}  # fmt: skip
    result: dict[str, Any] = {
        "shape": {"jobs": args.jobs, "workers_per_job": args.workers, "gpu_nodes": gpu_nodes, "gpus_per_worker": 1},
        "completed_jobs": len(latencies),
        "p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "p99_s": round(percentile(latencies, 0.99), 2) if latencies else None,
        "max_s": round(max(latencies), 2) if latencies else None,
        "jobs_per_s": round(len(latencies) / span, 2) if latencies else None,
        "operator_peak_rss_mb": round(rss, 1),
        "operator_api_requests_per_job": per_job,
        "operator_api_requests_per_job_total": round(sum(per_job.values()), 2),
        "operator_log": str(log),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
