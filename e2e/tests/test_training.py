"""TrainingJob on a real API server with kwok GPU nodes: gang start, scheduling, restarts, lifecycle.

Workers are fake (kwok): they go Running by kwok's pod stage. A test makes a worker fail by
labelling and annotating the pod (kwok's ``pod-container-running-failed`` stage, with the exit
code from an annotation), and makes workers finish by annotating them with a termination message
(Lepton's ``pod-termination-message`` stage), which is also how a trainer reports progress.
Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import uuid

from localcluster import config, nodes
from localcluster.kube import Kubectl, wait_until
from operator_fixtures import RunningOperator, metric_samples

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0


def job(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"image": "ghcr.io/example/trainer:1", **spec}}  # fmt: skip


def status_of(kubectl: Kubectl, name: str) -> dict[str, Any]:
    found: dict[str, Any] = kubectl.get("tj", name).get("status", {})
    return found


def wait_phase(kubectl: Kubectl, name: str, phase: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = status_of(kubectl, name)
        return status if status.get("phase") == phase else None

    result: dict[str, Any] = wait_until(reached, timeout, f"TrainingJob {name} {phase}")
    return result


def workers(kubectl: Kubectl, name: str, group: int | None = None) -> list[dict[str, Any]]:
    selector = f"lepton.ai/trainingjob={name},lepton.ai/role=worker"
    if group is not None:
        selector += f",lepton.ai/group={group}"
    pods: list[dict[str, Any]] = kubectl.get("pods", None, "-l", selector)
    return sorted(pods, key=lambda p: int(p["metadata"]["labels"]["lepton.ai/worker-index"]))


def fail_worker(kubectl: Kubectl, pod: str, exit_code: int) -> None:
    kubectl("annotate", "pod", pod, f"{config.FAIL_EXIT_CODE}={exit_code}", f"{config.FAIL_DELAY}=0")
    kubectl("label", "pod", pod, f"{config.FAIL_LABEL}=true")


def finish_workers(kubectl: Kubectl, name: str, group: int, message: str) -> None:
    for pod in workers(kubectl, name, group):
        kubectl("annotate", "pod", pod["metadata"]["name"], f"{config.TERMINATION_MESSAGE}={message}",
                f"{config.TERMINATION_DELAY}=0")  # fmt: skip


def events(kubectl: Kubectl, name: str, reason: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = kubectl.get("events", None, "--field-selector",
                                              f"involvedObject.name={name},involvedObject.kind=TrainingJob,reason={reason}")  # fmt: skip
    return found


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v.get("value", "") for v in pod["spec"]["containers"][0]["env"]}


def test_training_gpu_job_runs_on_gpu_nodes_only_when_every_worker_runs(
    lepton_operator: RunningOperator, kubectl: Kubectl, namespace: str
) -> None:
    gpu = {"count": 2, "product": config.GPU_PRODUCT}
    kubectl.apply(job("bert", workers={"replicas": 4, "gpu": gpu}), "--server-side")
    status = wait_phase(kubectl, "bert", "Running")
    assert status["workers"]["desired"] == 4 and status["workers"]["ready"] == 4
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    pods = workers(kubectl, "bert", group=0)
    assert [p["spec"]["hostname"] for p in pods] == [f"bert-worker-{i}" for i in range(4)]
    for index, pod in enumerate(pods):
        assert pod["spec"]["nodeName"].startswith("kwok-gpu-"), pod["spec"]["nodeName"]
        assert pod["spec"]["subdomain"] == "bert"
        assert pod["spec"]["nodeSelector"] == {config.GPU_PRODUCT_LABEL: config.GPU_PRODUCT}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
        env = env_of(pod)
        assert env["MASTER_ADDR"] == f"bert-worker-0.bert.{namespace}.svc"
        assert (env["WORLD_SIZE"], env["NODE_RANK"], env["RANK"]) == ("8", str(index), str(2 * index))
        assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == ("4", "2")
    service = kubectl.get("service", "bert")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    wait_until(lambda: events(kubectl, "bert", "Running"), TIMEOUT, "a Running event")
    # What Flux and scripts use: kstatus conditions make `kubectl wait` work as is.
    assert "condition met" in kubectl("wait", "--for=condition=Ready", "tj/bert", "--timeout=30s")
    samples = metric_samples(lepton_operator.metrics(), "lepton_training_workers")
    assert samples[(("state", "desired"),)] >= 4


def test_training_job_larger_than_any_node_says_why_it_waits(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    kubectl.apply(job("huge", workers={"replicas": 2, "gpu": {"count": 16}}), "--server-side")
    status = wait_phase(kubectl, "huge", "Pending")
    assert status["reason"] == "Unschedulable"
    scheduled = {c["type"]: c for c in status["conditions"]}["WorkersScheduled"]
    assert scheduled["status"] == "False" and "Insufficient nvidia.com/gpu" in scheduled["message"], scheduled
    assert "cannot fit even on empty nodes" in scheduled["message"]  # waiting would not help: gang admission says so
    assert all(p["spec"].get("schedulingGates") for p in workers(kubectl, "huge"))  # and keeps them off the scheduler
    wait_until(lambda: events(kubectl, "huge", "Pending"), TIMEOUT, "a Pending warning event")


def test_training_two_jobs_that_fit_alone_but_not_together_run_one_after_the_other_never_half_bound(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    """Gang admission: 2 + 2 workers of 4 GPUs on three 4-GPU nodes, created together.

    Without it the second job gets one worker bound and waits forever for the
    second while holding a node (Kubeflow #1617); with it, the group that
    does not fit whole keeps its scheduling gates and starts whole once the
    first job is done.
    """
    product = f"TEST-GPU-{uuid.uuid4().hex[:6]}"  # only this test's nodes carry it
    added = [nodes.add_gpu_node(kubectl, gpus=4, product=product) for _ in range(3)]
    try:
        spec = {"workers": {"replicas": 2, "gpu": {"count": 4, "product": product}}}
        kubectl.apply({"apiVersion": "v1", "kind": "List", "items": [job("gang-a", **spec), job("gang-b", **spec)]}, "--server-side")

        def one_runs_one_waits() -> tuple[str, str, dict[str, Any]] | None:
            states = {name: status_of(kubectl, name) for name in ("gang-a", "gang-b")}
            phases = {name: (s.get("phase"), s.get("reason")) for name, s in states.items()}
            for first, second in (("gang-a", "gang-b"), ("gang-b", "gang-a")):
                if phases[first][0] == "Running" and phases[second] == ("Pending", "WaitingForCapacity"):
                    return first, second, states[second]
            return None

        first, second, _ = wait_until(one_runs_one_waits, TIMEOUT, "one job Running, the other waiting whole")

        def says_why() -> dict[str, Any] | None:
            # The first look may predate the operator's news of the third node (its listing is
            # up to 2 s old); the node's event makes the waiting group look again.
            scheduled = {c["type"]: c for c in status_of(kubectl, second).get("conditions", [])}["WorkersScheduled"]
            return scheduled if "2 workers of nvidia.com/gpu 4 each, 1 fit now" in scheduled["message"] else None

        assert wait_until(says_why, TIMEOUT, f"{second} saying 1 of its 2 workers fits now")["status"] == "False"
        assert status_of(kubectl, first)["phase"] == "Running"
        held = workers(kubectl, second)
        assert len(held) == 2 and not any(p["spec"].get("nodeName") for p in held)
        assert all(p["spec"]["schedulingGates"] == [{"name": "lepton.ai/gang"}] for p in held)
        wait_until(lambda: events(kubectl, second, "Pending"), TIMEOUT, "a Pending warning event")

        finish_workers(kubectl, first, 0, json.dumps({"step": 1}))
        wait_phase(kubectl, first, "Succeeded")
        status = wait_phase(kubectl, second, "Running")
        assert status["workers"]["ready"] == 2
        placed = workers(kubectl, second)
        assert all(p["spec"]["nodeName"] in added and not p["spec"].get("schedulingGates") for p in placed)
    finally:
        for name in added:
            nodes.delete_node(kubectl, name, wait=False)


def test_training_retryable_failure_restarts_the_group_which_then_succeeds(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    spec = {"workers": {"replicas": 2}, "restartPolicy": {"backoffLimit": 2, "backoff": {"initialSeconds": 1}}}
    kubectl.apply(job("retry", **spec), "--server-side")
    wait_phase(kubectl, "retry", "Running")
    fail_worker(kubectl, "retry-worker-1-g0", 143)

    def second_group_running() -> dict[str, Any] | None:
        status = status_of(kubectl, "retry")
        return status if status.get("group") == 1 and status.get("phase") == "Running" else None

    status = wait_until(second_group_running, TIMEOUT, "the restarted group Running")
    assert status["restarts"]["total"] == 1 and status["restarts"]["byReason"] == {"RetryableExitCode": 1}
    assert workers(kubectl, "retry", group=0) == []  # the old group never mixes with the new one
    assert len(workers(kubectl, "retry", group=1)) == 2
    assert events(kubectl, "retry", "Restarting")

    finish_workers(kubectl, "retry", 1, json.dumps({"step": 40, "epoch": 2, "loss": 0.5}))
    status = wait_phase(kubectl, "retry", "Succeeded")
    assert status["progress"]["step"] == 40 and status["progress"]["loss"] == 0.5
    assert status["completionTime"]


def test_training_non_retryable_exit_fails_at_once_and_keeps_the_failed_pod(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    kubectl.apply(job("broken", workers={"replicas": 2}), "--server-side")
    wait_phase(kubectl, "broken", "Running")
    fail_worker(kubectl, "broken-worker-0-g0", 2)
    status = wait_phase(kubectl, "broken", "Failed")
    assert status["reason"] == "NonRetryableExitCode"
    assert status.get("restarts", {}).get("total", 0) == 0
    wait_until(lambda: [p["metadata"]["name"] for p in workers(kubectl, "broken")] == ["broken-worker-0-g0"],
               TIMEOUT, "only the failed pod left (cleanPodPolicy Running)")  # fmt: skip


def test_training_retryable_failures_fail_the_job_after_exactly_backoff_limit_restarts(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    spec = {"workers": {"replicas": 1}, "restartPolicy": {"backoffLimit": 1, "backoff": {"initialSeconds": 0}}}
    kubectl.apply(job("flaky", **spec), "--server-side")
    for group in (0, 1):
        wait_until(lambda g=group: status_of(kubectl, "flaky").get("group") == g  # type: ignore[misc]
                   and status_of(kubectl, "flaky").get("phase") == "Running", TIMEOUT, f"group {group} Running")  # fmt: skip
        fail_worker(kubectl, f"flaky-worker-0-g{group}", 137)
    status = wait_phase(kubectl, "flaky", "Failed")
    assert status["reason"] == "BackoffLimitExceeded"
    assert status["restarts"]["total"] == 1 and status["restarts"]["byReason"] == {"RetryableExitCode": 1}


def test_training_suspend_deletes_workers_and_resume_starts_a_new_group(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    kubectl.apply(job("pause", workers={"replicas": 2}), "--server-side")
    wait_phase(kubectl, "pause", "Running")
    kubectl("patch", "tj", "pause", "--type=merge", "-p", json.dumps({"spec": {"runPolicy": {"suspend": True}}}))
    wait_phase(kubectl, "pause", "Suspended")
    wait_until(lambda: workers(kubectl, "pause") == [], TIMEOUT, "no workers while suspended")
    kubectl("patch", "tj", "pause", "--type=merge", "-p", json.dumps({"spec": {"runPolicy": {"suspend": False}}}))
    status = wait_phase(kubectl, "pause", "Running")
    assert status["group"] == 1 and status.get("restarts", {}).get("total", 0) == 0
    assert len(workers(kubectl, "pause", group=1)) == 2


def test_training_finished_job_is_deleted_after_its_ttl(lepton_operator: RunningOperator, kubectl: Kubectl) -> None:
    kubectl.apply(job("short", workers={"replicas": 1}, runPolicy={"ttlSecondsAfterFinished": 2}), "--server-side")
    wait_phase(kubectl, "short", "Running")
    finish_workers(kubectl, "short", 0, json.dumps({"step": 1}))
    wait_phase(kubectl, "short", "Succeeded")
    wait_until(lambda: kubectl.get_or_none("tj", "short") is None, TIMEOUT, "the job deleted after its TTL")


def test_training_workers_on_a_deleted_node_are_replaced_as_a_group(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    product = f"TEST-GPU-{uuid.uuid4().hex[:6]}"  # only this test's two nodes carry it
    added = [nodes.add_gpu_node(kubectl, product=product) for _ in range(2)]
    try:
        spec = {"workers": {"replicas": 1, "gpu": {"count": 8, "product": product}},
                "restartPolicy": {"backoff": {"initialSeconds": 0}}}  # fmt: skip
        kubectl.apply(job("lost", **spec), "--server-side")
        wait_phase(kubectl, "lost", "Running")
        [first] = workers(kubectl, "lost", group=0)
        doomed = first["spec"]["nodeName"]
        assert doomed in added
        nodes.delete_node(kubectl, doomed)

        def replaced() -> dict[str, Any] | None:
            status = status_of(kubectl, "lost")
            return status if status.get("group") == 1 and status.get("phase") == "Running" else None

        status = wait_until(replaced, TIMEOUT, "the group replaced on the other node")
        assert status["restarts"]["byReason"] == {"NodeLost": 1}
        [second] = workers(kubectl, "lost", group=1)
        assert second["spec"]["nodeName"] == next(n for n in added if n != doomed)
    finally:
        for name in added:
            nodes.delete_node(kubectl, name, wait=False)


def test_training_elastic_job_grows_with_gpu_nodes_and_shrinks_when_they_go(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    product = f"TEST-GPU-{uuid.uuid4().hex[:6]}"  # only this test's nodes carry it
    added = [nodes.add_gpu_node(kubectl, product=product)]
    try:
        spec = {"workers": {"replicas": 1, "minReplicas": 1, "maxReplicas": 3, "gpu": {"count": 8, "product": product}}}
        kubectl.apply(job("stretch", **spec), "--server-side")

        def running_with(size: int) -> dict[str, Any] | None:
            status = status_of(kubectl, "stretch")
            ok = status.get("phase") == "Running" and status.get("workers", {}).get("desired") == size
            return status if ok else None

        wait_until(lambda: running_with(1), TIMEOUT, "1 worker on the one node")
        gauge = metric_samples(lepton_operator.metrics(), "lepton_training_workers")
        assert gauge[(("state", "schedulable"),)] >= 1
        added.append(nodes.add_gpu_node(kubectl, product=product))

        def grown() -> list[dict[str, Any]] | None:
            # Status and pods are read apart, so take them only when they agree (the group's
            # pods exist): on a loaded machine a group can move on between the two reads.
            status = running_with(2)
            pods = workers(kubectl, "stretch", group=status["group"]) if status else []
            return pods if len(pods) == 2 else None

        pods = wait_until(grown, TIMEOUT, "grown to 2 workers, the status's group running")
        assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(added)
        assert {env_of(p)["PET_NNODES"] for p in pods} == {"1:3"} and {env_of(p)["WORLD_SIZE"] for p in pods} == {"16"}

        nodes.delete_node(kubectl, added.pop())
        status = wait_until(lambda: running_with(1), TIMEOUT, "shrunk to 1 worker")
        assert status["restarts"]["byReason"] == {"Resized": 2}, status["restarts"]
        assert events(kubectl, "stretch", "Restarting")
        samples = metric_samples(lepton_operator.metrics(), "lepton_training_restarts_total")
        assert samples[(("reason", "Resized"),)] >= 2
    finally:
        for name in added:
            nodes.delete_node(kubectl, name, wait=False)


def test_training_job_past_its_active_deadline_fails_and_its_workers_go(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    kubectl.apply(job("slow", workers={"replicas": 2}, runPolicy={"activeDeadlineSeconds": 3}), "--server-side")
    wait_phase(kubectl, "slow", "Running")
    status = wait_phase(kubectl, "slow", "Failed")
    assert status["reason"] == "DeadlineExceeded"
    wait_until(lambda: workers(kubectl, "slow") == [], TIMEOUT, "running workers deleted (cleanPodPolicy Running)")
    wait_until(lambda: events(kubectl, "slow", "DeadlineExceeded"), TIMEOUT, "a DeadlineExceeded event")
