"""Chaos: the dependencies Lepton reads go down, and what it does meanwhile is checked.

**Prometheus** stopped under an autoscaled load. Invariant: the replicas are held,
never scaled down on missing data (an autoscaler that reads a failed query as
zero, KEDA's trap, drops the replicas the load still needs); the
``ScalingActive`` condition says why (False, ``SignalUnknown``, Prometheus'
error); once Prometheus is back the service converges to what its real load
asks, and the time that takes is printed.

Real parts: the operator's autoscaler, a real Prometheus process (stopped with
SIGTERM, started again on the same port and data), Triton-protocol simulators
for the kwok replicas (``localcluster.serving.Replicas``) and an open-loop
tritonclient load.

**The S3 server** stopped under a dataset's preparation, on real pods: versitygw
runs in the local cluster's network on the node's address (``localcluster.s3``),
the in-cluster operator's prepare Job fetches from it over the pod network with
the keys of a Secret. Invariant: the failed attempt is a reason on the dataset
(``Retrying``, with the preparer's ``SourceUnreachable`` and its message), the
Job retries (a retryable exit, never ``Failed``), and once the server is back the
dataset is Ready with every record: nothing lost, nothing to do by hand.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from incluster_fixtures import NAMESPACE_PREFIX, InClusterOperator
from localcluster import nodeconfig
from localcluster.cluster import Cluster
from localcluster.images import Image
from localcluster.kube import Kubectl, condition, wait_until
from localcluster.lepton import free_port
from localcluster.s3 import ACCESS, REGION, SECRET, Versitygw
from localcluster.serving import Load, Prometheus, Replicas
from operator_fixtures import RunningOperator
from serving_fixtures import MODEL, SERVICE_TIME_MS, apply_autoscaled, replicas_of

pytestmark = pytest.mark.e2e

NAME = "held"
STABILIZATION_SECONDS = 10


def scaling_active(kubectl: Kubectl) -> dict[str, Any]:
    conditions = kubectl.get("lis", NAME).get("status", {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "ScalingActive"), {})


def test_prometheus_down_under_load_holds_the_replicas_says_why_and_converges_once_back(
    lepton_operator: RunningOperator, kubectl: Kubectl, namespace: str, repository: Path, prometheus: Prometheus
) -> None:
    selector = apply_autoscaled(kubectl, NAME, prometheus, minReplicas=1, maxReplicas=3, signal="concurrency",
                                target=0.5, windowSeconds=6,
                                scaleDownStabilizationSeconds=STABILIZATION_SECONDS)  # fmt: skip
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


BUCKET, OBJECT, RECORDS = "chaos", "corpus.jsonl", 40
UPLOAD = """
import sys
from minio import Minio
client = Minio(sys.argv[1], access_key=sys.argv[2], secret_key=sys.argv[3], secure=False, region=sys.argv[4])
if not client.bucket_exists(sys.argv[5]):
    client.make_bucket(sys.argv[5])
client.fput_object(sys.argv[5], sys.argv[6], sys.argv[7])
"""


@pytest.fixture
def real_pods_namespace(cluster: Cluster, cluster_kubectl: Kubectl, built_images: dict[str, Image],
                        incluster_operator: InClusterOperator) -> Iterator[Kubectl]:  # fmt: skip
    """A namespace of the in-cluster operator whose pods run on the real node, deleted afterwards."""
    if cluster.real_node is None or not cluster.network:
        pytest.fail("the S3 outage is proven on the local cluster's real node")
    namespace = f"{NAMESPACE_PREFIX}chaos-s3-{uuid.uuid4().hex[:6]}"
    cluster_kubectl.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kubectl = cluster_kubectl.in_namespace(namespace)
    try:
        wait_until(lambda: kubectl.get_or_none("serviceaccount", "default"), 30, "the namespace's ServiceAccount")
        yield kubectl
    finally:
        cluster_kubectl.run("delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False)


def test_s3_down_under_a_preparation_is_retried_with_a_reason_and_ready_once_back(
    cluster: Cluster, real_pods_namespace: Kubectl, tmp_path: Path
) -> None:
    kubectl = real_pods_namespace
    server = Versitygw(tmp_path / "s3", nodeconfig.NODE_IP, free_port(), prefix=cluster.network)
    corpus = tmp_path / OBJECT
    corpus.write_text("".join(json.dumps({"id": i, "text": f"record {i}"}) + "\n" for i in range(RECORDS)))
    upload = [sys.executable, "-c", UPLOAD, server.address, ACCESS, SECRET, REGION, BUCKET, OBJECT, str(corpus)]
    server.start()
    try:
        wait_until(lambda: server.exited() is None and cluster.run_in_network(upload).returncode == 0, 60,
                   "the corpus uploaded to S3 in the cluster's network")  # fmt: skip
        server.stop()  # the outage
        kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys"},
                       "stringData": {"accessKeyId": ACCESS, "secretAccessKey": SECRET}})  # fmt: skip
        source = {"uri": f"s3://{BUCKET}/{OBJECT}", "endpoint": server.endpoint, "region": REGION,
                  "secretRef": {"name": "s3-keys"}}  # fmt: skip
        kubectl.apply({"apiVersion": "lepton.ai/v1alpha1", "kind": "LeptonDataset", "metadata": {"name": "outage"},
                       "spec": {"source": source, "modality": "text", "shards": {"count": 4},
                                "storage": {"size": "100Mi"}, "prepare": {"backoffLimit": 6}}})  # fmt: skip

        def retrying() -> dict[str, Any] | None:
            status = kubectl.get("lds", "outage").get("status") or {}
            ready = condition({"status": status}, "Ready") or {}
            return ready if status.get("phase") == "Preparing" and ready.get("reason") == "Retrying" else None

        why: dict[str, Any] = wait_until(retrying, 240, "the failed attempt shown as a reason while S3 is down")
        assert why["message"] == (f"an attempt failed (SourceUnreachable: s3://{BUCKET}/{OBJECT}: the endpoint "
                                  f"{server.endpoint} failed: Connection refused); retrying"), why  # fmt: skip
        print(f"\nwhile S3 is down: {why['message']}")
        server.start()
        back = time.monotonic()
        def prepared() -> dict[str, Any] | None:
            status: dict[str, Any] = kubectl.get("lds", "outage").get("status") or {}
            return status if status.get("phase") == "Ready" else None

        ready: dict[str, Any] = wait_until(prepared, 240, "the dataset Ready once S3 is back")
        print(f"S3 back -> dataset Ready {time.monotonic() - back:.1f} s")
    finally:
        server.stop()
    assert ready["records"] == RECORDS
    [job] = kubectl.get("jobs", None, "-l", "lepton.ai/leptondataset=outage")
    assert job["status"].get("failed", 0) >= 1 and job["status"].get("succeeded") == 1  # retried, not recreated
