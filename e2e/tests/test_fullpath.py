"""The whole path on real pods: the shipped quickstart prepared, trained, served and autoscaled.

On the local cluster's real node, with the in-cluster operator and the cluster's Prometheus
(``localcluster.quickstart``, the same path ``make demo`` shows):

1. the sample-data server (a pod) serves generated images, wav and text; the LeptonDataset's
   prepare Job runs the real preparer; status numbers equal the ``manifest.json`` on the volume;
2. the TrainingJob's two worker pods train with DDP (gloo, rendezvous through the headless
   Service's name); ``status.progress`` moves; a worker pod deleted mid-run restarts the group,
   which resumes from the latest checkpoint; the job Succeeds with the export on its claim;
3. the InferenceService stages that export; its Triton-protocol replicas are Ready only once
   the model is; an inference through the Service, with the quickstart's API key, returns what
   the exported model computes, and the model tells the classes apart; without the key it is
   refused (403);
4. a tritonclient load step through the Service (with the key) scales it up on Triton's signal read from
   Prometheus, the new replica takes traffic, and it scales back down with zero failed requests.

Then failures on real pods: a worker exiting with a retryable code restarts its group, and a
checksum mismatch fails a dataset with a reason until its spec points at the right file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from tritonclient.utils import InferenceServerException

from incluster_fixtures import NAMESPACE_PREFIX, InClusterOperator
from localcluster import monitoring, netns, quickstart, realnode
from localcluster.cluster import Cluster
from localcluster.handle import ClusterError
from localcluster.images import Image
from localcluster.kube import Kubectl, wait_until
from localcluster.quickstart import DATASET, JOB, MODEL, SERVICE, Quickstart, sample_images
from localcluster.serving import infer
from lepton_workloads import demo_data, shards, triton_config

pytestmark = pytest.mark.e2e

CHECKPOINT_EVERY = 50
LOAD_RPS = 30.0


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, cluster_kubectl: Kubectl) -> monitoring.Monitoring:
    return monitoring.ensure(cluster, cluster_kubectl)


@pytest.fixture(scope="module")
def run(cluster: Cluster, cluster_kubectl: Kubectl, built_images: dict[str, Image],
        incluster_operator: InClusterOperator, prometheus: monitoring.Monitoring) -> Iterator[Quickstart]:  # fmt: skip
    started = time.monotonic()
    path = Quickstart(cluster, f"{NAMESPACE_PREFIX}fullpath-{uuid.uuid4().hex[:6]}", built_images)
    path.apply()
    try:
        yield path
    finally:
        print(f"\nfull path module: {time.monotonic() - started:.0f} s")
        path.stop()
        if not os.environ.get("LEPTON_E2E_KEEP"):  # kept with the cluster, to look at after a failure
            cluster_kubectl.delete("namespace", path.namespace)


def example(kind: str) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all(quickstart.EXAMPLE.read_text()) if d["kind"] == kind)


def test_the_quickstart_prepares_trains_across_pods_serves_and_autoscales(
    run: Quickstart, prometheus: monitoring.Monitoring
) -> None:
    started = time.monotonic()
    # 1. Data: prepared once by the real preparer; status says what the manifest on the volume says.
    status = run.dataset_ready()
    [text] = run.read_claim(status["claimName"], ["manifest.json"]).values()
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "manifest.json").write_bytes(text)
        manifest, digest = shards.read_manifest(Path(scratch))
    assert status["digest"] == digest
    assert status["records"] == sum(s.records for s in manifest.shards) == 600
    assert status["sizeBytes"] == sum(s.bytes for s in manifest.shards) and status["shards"] == len(manifest.shards)
    assert {s.split for s in manifest.shards} == {"train", "validation"} and manifest.extra["labels"] == sorted(demo_data.CLASSES)
    prepared = time.monotonic()

    # 2. Training: two worker pods on the real node; progress moves while they train.
    first = run.training_reaches(lambda s: s.get("phase") == "Running" and (s.get("progress") or {}).get("step", 0) > 0,
                                 300, "the job Running and reporting progress")  # fmt: skip
    pods = run.workers(first["group"])
    assert len(pods) == 2 and {p["spec"]["nodeName"] for p in pods} == {run.cluster.real_node}
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == f"{JOB}-worker-0.{JOB}.{run.namespace}.svc" and env["WORLD_SIZE"] == "2"
    moved = run.training_reaches(lambda s: s["progress"]["step"] > first["progress"]["step"], 120, "progress to advance")
    # A worker goes away mid-run, after a checkpoint: the group restarts and resumes from it.
    checkpointed = run.training_reaches(lambda s: s["progress"]["step"] >= CHECKPOINT_EVERY + 5, 300,
                                        f"a checkpoint at step {CHECKPOINT_EVERY}")  # fmt: skip
    assert checkpointed["phase"] == "Running", checkpointed
    [victim] = [p["metadata"]["name"] for p in run.workers(checkpointed["group"]) if p["metadata"]["labels"]["lepton.ai/worker-index"] == "1"]
    run.kubectl("delete", "pod", victim, "--wait=false")
    resumed = run.training_reaches(lambda s: s.get("group", 0) > checkpointed["group"] and s.get("phase") == "Running"
                                   and (s.get("progress") or {}).get("resumedFrom", 0) > 0, 300,
                                   "the new group running, resumed from a checkpoint")  # fmt: skip
    assert resumed["restarts"]["byReason"] == {"NodeLost": 1}, resumed["restarts"]  # "deleted by someone else"
    # Status trails the trainer by a poll, so the checkpoint it resumed from is at least the last one seen.
    assert resumed["progress"]["resumedFrom"] % CHECKPOINT_EVERY == 0
    assert resumed["progress"]["resumedFrom"] >= checkpointed["progress"]["step"] // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    done = run.training_reaches(lambda s: s.get("phase") == "Succeeded", 600, "the job to succeed")
    assert done["progress"]["resumedFrom"] == resumed["progress"]["resumedFrom"]
    assert done["progress"]["step"] > checkpointed["progress"]["step"] >= moved["progress"]["step"]
    exported = run.export()
    config = triton_config.from_protobuf(triton_config.parse(exported["config.pbtxt"].decode()))
    assert config.format == "pytorch_libtorch" and config.inputs[0].dims == (1, demo_data.SIZE, demo_data.SIZE)
    trained = time.monotonic()

    # 3. Serving: the export staged into Triton-protocol replicas, Ready once the model is.
    serving = run.serving_ready()
    [server] = run.server_pods()
    assert server["spec"]["nodeName"] == run.cluster.real_node
    assert server["spec"]["initContainers"][0]["name"] == "stage-model"
    model = torch.jit.load(io.BytesIO(exported["model.pt"]))
    labels, images = sample_images(15, seed=99)  # records the model has not seen (a batch within maxBatchSize)
    answer = run.infer(images)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    assert answer.shape == expected.shape == (15, len(demo_data.CLASSES))
    assert np.allclose(answer, expected, atol=1e-4)  # the served model is the exported one
    with pytest.raises(InferenceServerException) as refused:  # served behind the quickstart's API key: none, no answer
        infer(run.service_address(), MODEL, images)
    assert refused.value.status() == "403"
    names = manifest.extra["labels"]
    accuracy = np.mean([names[i] == label for i, label in zip(answer.argmax(axis=1), labels, strict=True)])
    assert accuracy >= 0.8, accuracy  # and it learned: it tells the classes apart
    ready = time.monotonic()

    # 4. Scaling on Triton's signal from Prometheus: up under a load step, then down, no request lost.
    load = run.load(lambda: images[:1])
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        load.rate = LOAD_RPS
        step = time.monotonic()
        run.wait(lambda: run.replicas()[0] > 1, 90, "a scale-up decision")
        decided = time.monotonic() - step
        run.wait(lambda: run.replicas()[2] > 1, 180, "a second replica Ready")
        added = [p["metadata"]["name"] for p in run.server_pods() if p["metadata"]["name"] != server["metadata"]["name"]]
        selector = f'namespace="{run.namespace}",service="{SERVICE}"'

        def took_traffic() -> bool:
            return any((prometheus.value(f'nv_inference_request_success{{{selector},pod="{pod}"}}') or 0) > 0 for pod in added)

        run.wait(took_traffic, 90, "the new replica serving requests")
        scaled_up = time.monotonic() - step
        load.rate = 0.0
        calm = time.monotonic()
        run.wait(lambda: run.replicas() == (1, 1, 1), 240, "back to one replica")
        scaled_down = time.monotonic() - calm
    finally:
        load.stop()
        thread.join(10)
    wait_until(lambda: all(t.in_flight == 0 for t in load.targets), 60, "the last requests to finish")
    print(f"\nstages: prepared {prepared - started:.0f} s, trained {trained - prepared:.0f} s, served {ready - trained:.0f} s; "
          f"load step -> decision {decided:.1f} s, -> new replica serving {scaled_up:.1f} s; idle -> one replica {scaled_down:.0f} s; "
          f"requests {load.succeeded} ok, {load.failed} failed")  # fmt: skip
    assert load.failed == 0, load.errors[:5]
    assert load.succeeded > 200
    autoscaling = run.status("inferenceservices", SERVICE)["autoscaling"]
    assert autoscaling["signal"] == "concurrency" and autoscaling["lastDecision"]["to"] == 1, autoscaling
    # The operator's own signals, as Prometheus scraped them from its pods.
    assert (prometheus.value(f'sum(lepton_inference_scale_decisions_total{{direction="up"}})') or 0) >= 1
    assert prometheus.value(f'lepton_inference_signal_value{{namespace="{run.namespace}",name="{SERVICE}"}}') is not None
    assert serving["url"]


def test_a_worker_exiting_with_a_retryable_code_restarts_its_group_on_real_pods(run: Quickstart) -> None:
    run.dataset_ready()
    # The node has room for one 2-worker group at a time: let the quickstart's own job finish first.
    run.training_reaches(lambda s: s.get("phase") == "Succeeded", 600, "the quickstart's job to finish")
    job = example("TrainingJob")
    job["metadata"] = {"name": "crashy"}
    job["spec"]["image"] = run.images["workloads"].ref
    job["spec"]["entrypoint"]["args"] = ["--model", "cnn", "--epochs", "2", "--batch-size", "16", "--crash-at-step", "20"]
    job["spec"]["checkpoint"] = {**job["spec"]["checkpoint"], "size": "256Mi", "everySteps": 10}
    job["spec"]["restartPolicy"] = {"backoff": {"initialSeconds": 1}}
    run.kubectl.apply(job, "--server-side")

    def finished() -> dict[str, Any] | None:
        status: dict[str, Any] = run.status("trainingjobs", "crashy")
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = run.wait(finished, 600, "the crashing job to finish")
    assert status["phase"] == "Succeeded", (status.get("reason"), [c["message"] for c in status["conditions"] if c["type"] == "Ready"])
    assert status["restarts"]["byReason"] == {"RetryableExitCode": 1}, status["restarts"]
    assert status["progress"]["resumedFrom"] == 20  # the checkpoint at the crash, not 0
    events = [e for e in run.kubectl.get("events", None, "--field-selector", "involvedObject.name=crashy")
              if e["reason"] == "Restarting"]  # fmt: skip
    assert events and "exit code 137" in events[0]["message"], events


def test_the_real_node_kubelet_restarted_mid_training_keeps_the_group_and_its_steps(run: Quickstart) -> None:
    """Chaos, node agent restart: the real node's kubelet stops and starts again while DDP trains.

    Invariant: the workers survive it (same pods, no container restart, no group restart; the
    kubelet's restart is shorter than the node's grace, so the node never turns NotReady) or, if
    the group does restart, it resumes from its checkpoint; either way the job Succeeds and its
    step reaches the end of the run, never going back past a checkpoint.
    """
    if run.cluster.real_node is None:
        pytest.fail("the kubelet restart is proven on the local cluster's real node")
    run.training_reaches(lambda s: s.get("phase") == "Succeeded", 600, "the quickstart's job to finish")
    job = example("TrainingJob")
    job["metadata"] = {"name": "steady"}
    job["spec"]["image"] = run.images["workloads"].ref
    # About 750 steps, some 30 s on this machine: the restart lands mid-run. The operator polls
    # progress every 10 s, too coarse to aim with; the workers' own progress lines are not.
    job["spec"]["entrypoint"]["args"] = ["--model", "cnn", "--epochs", "20", "--batch-size", "8"]
    job["spec"]["checkpoint"] = {**job["spec"]["checkpoint"], "size": "256Mi", "everySteps": 100}
    run.kubectl.apply(job, "--server-side")
    selector = "lepton.ai/trainingjob=steady,lepton.ai/role=worker"

    def logged_step() -> int | None:
        """The highest step a worker has printed so far (its JSON progress lines), or None."""
        steps = [json.loads(line)["step"] for pod in run.kubectl.get("pods", None, "-l", selector)
                 if pod["status"].get("phase") == "Running"
                 for line in run.kubectl.run("logs", pod["metadata"]["name"], check=False).stdout.splitlines()
                 if line.startswith("{") and '"step"' in line]  # fmt: skip
        return max(steps) if steps and max(steps) >= 10 else None

    at_step = run.wait(logged_step, 600, "the job training, its workers past step 10")
    before = {p["metadata"]["uid"] for p in run.kubectl.get("pods", None, "-l", selector)}
    started = time.monotonic()
    realnode.restart_kubelet(netns.instance())
    print(f"\nkubelet restarted at step {at_step}, serving again in {time.monotonic() - started:.1f} s")
    live = {"progress": {"step": at_step}}

    def moved_on() -> dict[str, Any] | None:  # the step moved on after the restart, or the job ended
        status: dict[str, Any] = run.status("trainingjobs", "steady")
        done = status.get("phase") in ("Succeeded", "Failed")
        return status if done or status.get("progress", {}).get("step", 0) > live["progress"]["step"] + 2 else None

    after = run.wait(moved_on, 600, "the job training on after the kubelet's restart")
    if after["restarts"]["total"] == 0:  # the workers survived the restart
        pods = run.kubectl.get("pods", None, "-l", selector)  # running, or succeeded and kept (cleanPodPolicy)
        assert pods and {p["metadata"]["uid"] for p in pods} <= before
        assert all(c["restartCount"] == 0 for p in pods for c in p["status"]["containerStatuses"])

    def finished() -> dict[str, Any] | None:
        status: dict[str, Any] = run.status("trainingjobs", "steady")
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = run.wait(finished, 600, "the job to finish after the kubelet's restart")
    assert status["phase"] == "Succeeded", (status.get("reason"), [c["message"] for c in status["conditions"]])
    assert status["progress"]["step"] > live["progress"]["step"]
    if status["restarts"]["total"] > 0:  # the group restarted: from its checkpoint, not from scratch
        assert status["progress"]["resumedFrom"] > 0, status["progress"]
    print(f"restarts {status['restarts']}, final step {status['progress']['step']}")
    node = run.kubectl.in_namespace(None).get("node", run.cluster.real_node)
    assert next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["status"] == "True"


def test_a_job_whose_progress_port_is_unreachable_trains_and_succeeds_all_the_same(run: Quickstart) -> None:
    """Chaos, progress endpoint unreachable: a NetworkPolicy of the namespace's own admits only the job's pods.

    The job's policy is off (``networkPolicy.enabled: false``) and a policy the test writes, as a
    platform team's would, admits the workers' peers only: the in-cluster operator's 10 s progress
    polls cannot connect. Invariant: training is unaffected (no restart, every step run, the job
    Succeeds with its export) and the progress arrives with the workers' termination message; while
    the job runs, no step short of the last is shown (which is how the test knows the port was closed).
    """
    run.training_reaches(lambda s: s.get("phase") == "Succeeded", 600, "the quickstart's job to finish")
    selector = {"lepton.ai/trainingjob": "unpolled"}
    run.kubectl.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "only-peers"},
                       "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"],
                                "ingress": [{"from": [{"podSelector": {"matchLabels": selector}}]}]}})  # fmt: skip
    job = example("TrainingJob")
    job["metadata"] = {"name": "unpolled"}
    job["spec"]["image"] = run.images["workloads"].ref
    job["spec"]["entrypoint"]["args"] = ["--model", "cnn", "--epochs", "20", "--batch-size", "8"]
    job["spec"]["checkpoint"] = {**job["spec"]["checkpoint"], "size": "256Mi", "everySteps": 100}
    job["spec"]["networkPolicy"] = {"enabled": False}
    run.kubectl.apply(job, "--server-side")
    live_steps: set[int] = set()

    def finished() -> dict[str, Any] | None:
        status: dict[str, Any] = run.status("trainingjobs", "unpolled")
        if status.get("phase") == "Running" and "step" in (status.get("progress") or {}):
            live_steps.add(status["progress"]["step"])
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = run.wait(finished, 600, "the job to finish with its progress port closed to the operator")
    assert status["phase"] == "Succeeded", (status.get("reason"), [c["message"] for c in status["conditions"]])
    assert status["restarts"]["total"] == 0
    # The first worker to finish reports its last step by termination message while the job still
    # runs; a poll through the port would have shown earlier steps (about 3 in a 30 s run).
    assert not [step for step in live_steps if step < status["progress"]["step"]], (
        f"the operator read live progress through the closed port: {sorted(live_steps)}")
    # every step ran: 20 epochs of 38 (the quickstart's train split over 2 workers, batches of 8)
    assert status["progress"]["step"] == 760, status["progress"]
    run.kubectl.delete("networkpolicy", "only-peers")


def test_a_checksum_mismatch_fails_the_dataset_with_a_reason_until_it_points_at_the_right_file(run: Quickstart) -> None:
    args = example("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    with tempfile.TemporaryDirectory() as scratch:  # the server's data is a pure function of its arguments
        _, digest = demo_data.write_dataset(Path(scratch), int(args[args.index("--records") + 1]))
    archives = f"http://{quickstart.DATA}:8080/{demo_data.ARCHIVES}/"
    dataset = {"apiVersion": "lepton.ai/v1alpha1", "kind": "LeptonDataset", "metadata": {"name": "checked"},
               "spec": {"source": {"uri": archives + demo_data.CORRUPTED}, "modality": "multimodal",
                        "verify": {"sha256": digest}, "storage": {"size": "1Gi"}}}  # fmt: skip
    run.kubectl.apply(dataset, "--server-side")
    failed = run.wait(lambda: (s := run.status("leptondatasets", "checked")).get("phase") == "Failed" and s, 300,
                      "the corrupted download to fail the dataset")  # fmt: skip
    why = next(c for c in failed["conditions"] if c["type"] == "Ready")
    assert why["status"] == "False" and why["reason"] == "ChecksumMismatch" and digest in why["message"], why
    dataset["spec"]["source"]["uri"] = archives + demo_data.ARCHIVE
    run.kubectl.apply(dataset, "--server-side")
    fixed = run.wait(lambda: (s := run.status("leptondatasets", "checked")).get("phase") == "Ready" and s, 300,
                     "the dataset to recover on the right file")  # fmt: skip
    assert fixed["records"] == 600
    ready = next(c for c in fixed["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_a_dataset_claim_too_small_for_its_shards_fails_with_the_size_it_needs_and_publishes_no_manifest(
    run: Quickstart,
) -> None:
    """Chaos, disk pressure: the claim holds the fetched archive but not its shards as well.

    The local cluster's volumes (hostPath) enforce no size, as many do not: the preparer keeps
    to the claim's size itself (``claim_budget``). Invariant: the dataset fails with
    ``InsufficientStorage`` and the size it needs, and the claim has no manifest to mistake for data.
    """
    args = example("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    with tempfile.TemporaryDirectory() as scratch:  # the server's data is a pure function of its arguments
        demo_data.write_dataset(Path(scratch), int(args[args.index("--records") + 1]))
        archive_bytes = (Path(scratch) / demo_data.ARCHIVES / demo_data.ARCHIVE).stat().st_size
    size = archive_bytes * 3 // 2  # the staged archive fits; its shards beside it do not
    dataset = {"apiVersion": "lepton.ai/v1alpha1", "kind": "LeptonDataset", "metadata": {"name": "cramped"},
               "spec": {"source": {"uri": f"http://{quickstart.DATA}:8080/{demo_data.ARCHIVES}/{demo_data.ARCHIVE}"},
                        "modality": "multimodal", "storage": {"size": str(size)}}}  # fmt: skip
    run.kubectl.apply(dataset, "--server-side")
    failed = run.wait(lambda: (s := run.status("leptondatasets", "cramped")).get("phase") == "Failed" and s, 300,
                      "the dataset to fail on its claim's size")  # fmt: skip
    why = next(c for c in failed["conditions"] if c["type"] == "Ready")
    assert why["status"] == "False" and why["reason"] == "InsufficientStorage", why
    assert why["message"].startswith("the claim holds ") and "raise spec.storage.size" in why["message"], why
    with pytest.raises(ClusterError, match="FileNotFoundError"):
        run.read_claim("cramped", [shards.MANIFEST])  # no manifest was published
    run.kubectl.delete("leptondataset", "cramped")


def test_the_quickstart_names_what_it_serves() -> None:
    """The path above is the shipped quickstart's (no cluster needed)."""
    assert example("InferenceService")["spec"]["model"]["name"] == MODEL
    assert example("LeptonDataset")["metadata"]["name"] == DATASET
    assert example("TrainingJob")["spec"]["checkpoint"]["everySteps"] == CHECKPOINT_EVERY
