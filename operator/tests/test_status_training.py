"""TrainingJob decisions without a cluster: phases, gang start, failures and restart budgets, progress, lifecycle.

The parts the pass reads have their own tests: test_status_training_pods, _failures, _progress.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lepton_operator.api.training import RestartCounts, TrainingJobSpec
from lepton_operator.status import training as t
from lepton_operator.status.capacity import Held
from lepton_operator.status.training_failures import failure_restarts
from lepton_operator.status.training_progress import PROGRESS_SCHEMA
from worker_pods import NOW, failed, live_pod, pod


def spec(**fields: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"image": "trainer:1", **fields})


def assess(job: TrainingJobSpec, pods: list[dict[str, Any]], status: dict[str, Any] | None = None, *,
           now: datetime = NOW, **observed: Any) -> t.Plan:  # fmt: skip
    return t.assess(job, 3, status, t.Observed(pods=pods, now=now, **observed))


def conditions(plan: t.Plan) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in plan.status["conditions"]}


def test_a_new_job_creates_its_group_and_starts() -> None:
    plan = assess(spec(workers={"replicas": 4}), [])
    assert plan.create_workers and plan.group == 0 and plan.replicas == 4
    assert plan.phase == "Starting"
    assert plan.status["workers"]["desired"] == 4
    assert plan.status["observedGeneration"] == 3
    assert conditions(plan)["Reconciling"] == ("True", "WorkersCreated")
    assert conditions(plan)["Validated"] == ("True", "Valid")
    assert [e.reason for e in plan.events] == ["Starting"]


def test_running_only_when_every_worker_runs() -> None:
    job = spec(workers={"replicas": 3})
    plan = assess(job, [pod(0), pod(1), pod(2, phase="Pending", ready=False)])
    assert plan.phase == "Starting" and not plan.create_workers
    assert conditions(plan)["Ready"][0] == "False"
    plan = assess(job, [pod(0), pod(1), pod(2)])
    assert plan.phase == "Running"
    assert conditions(plan)["Ready"] == ("True", "AllWorkersRunning")
    assert conditions(plan)["WorkersScheduled"] == ("True", "AllWorkersScheduled")
    assert plan.status["startTime"] == "2026-01-02T03:04:05Z"
    assert plan.status["workers"] == {"desired": 3, "active": 3, "ready": 3, "succeeded": 0, "failed": 0}


def test_a_gang_that_cannot_be_scheduled_says_why() -> None:
    message = "0/6 nodes are available: 4 Insufficient nvidia.com/gpu, 2 node(s) didn't match selector."
    stuck = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    pods = [pod(0), pod(1, phase="Pending", node=None, conditions=[stuck])]
    plan = assess(spec(workers={"replicas": 2, "gpu": {"count": 8}}), pods)
    assert plan.phase == "Pending" and plan.status["reason"] == "Unschedulable"
    assert conditions(plan)["WorkersScheduled"] == ("False", "Unschedulable")
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "Insufficient nvidia.com/gpu" in ready["message"]
    assert ready["message"].startswith("1 of 2 workers cannot be scheduled")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "Pending")]


def test_a_group_held_by_gang_admission_is_pending_with_how_much_fits_and_still_creates_its_pods() -> None:
    held = Held("WaitingForCapacity", "waiting for room for the whole group: 4 workers of nvidia.com/gpu 8 each, 2 fit now")
    job = spec(workers={"replicas": 4, "gpu": {"count": 8}})
    plan = assess(job, [], held=held)
    assert plan.create_workers and plan.phase == "Pending" and plan.status["reason"] == "WaitingForCapacity"
    assert conditions(plan)["WorkersScheduled"] == ("False", "WaitingForCapacity")
    assert conditions(plan)["Reconciling"] == ("True", "WaitingForCapacity")
    assert [(e.type, e.reason, e.message) for e in plan.events] == [("Warning", "Pending", held.message)]
    gated = [pod(i, phase="Pending", ready=False, node=None) for i in range(4)]
    plan = assess(job, gated, plan.status, held=held)
    assert not plan.create_workers and plan.status["reason"] == "WaitingForCapacity" and plan.events == []
    assert assess(job, gated, plan.status).phase == "Starting"  # admitted: the pods go to the scheduler


def test_a_worker_whose_container_cannot_start_says_why_instead_of_starting_forever() -> None:
    message = 'container has runAsNonRoot and image will run as root (pod: "job-worker-1-g0", container: worker)'
    blocked = pod(1, phase="Pending", ready=False)
    blocked["status"]["containerStatuses"] = [
        {"name": "worker", "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}}}
    ]
    plan = assess(spec(workers={"replicas": 2}), [pod(0), blocked])
    assert plan.phase == "Pending" and plan.status["reason"] == "ContainerBlocked"
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == f"1 of 2 workers cannot start: worker job-worker-1-g0 CreateContainerConfigError: {message}"
    creating = pod(1, phase="Pending", ready=False)
    creating["status"]["containerStatuses"] = [{"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}]
    assert assess(spec(workers={"replicas": 2}), [pod(0), creating]).phase == "Starting"


def test_workers_waiting_for_an_unbound_claim_say_which_and_why() -> None:
    job = spec(workers={"replicas": 2}, checkpoint={"size": "1Gi"})
    waiting = [pod(i, phase="Pending", ready=False, node=None) for i in (0, 1)]
    claim = {"metadata": {"name": "job-checkpoint"}, "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "standard"},
             "status": {"phase": "Pending"}}  # fmt: skip
    plan = assess(job, waiting, {"phase": "Starting", "group": 0}, claims=[claim])
    assert plan.phase == "Pending" and plan.status["reason"] == "ClaimPending"
    assert conditions(plan)["WorkersScheduled"] == ("False", "ClaimPending")
    message = next(c["message"] for c in plan.status["conditions"] if c["type"] == "Ready")
    assert "job-checkpoint" in message and "ReadWriteMany" in message and "standard" in message
    bound = {**claim, "status": {"phase": "Bound"}}
    assert assess(job, waiting, {"phase": "Starting", "group": 0}, claims=[bound]).status["reason"] != "ClaimPending"


def test_missing_worker_is_created_without_touching_the_others() -> None:
    plan = assess(spec(workers={"replicas": 2}), [pod(0, phase="Pending", ready=False, node=None)])
    assert plan.create_workers and plan.delete_pods == []


def test_retryable_failure_restarts_the_whole_group_after_recording_it() -> None:
    job = spec(workers={"replicas": 3}, restartPolicy={"backoffLimit": 2, "backoff": {"initialSeconds": 10}})
    plan = assess(job, [pod(0), failed(1, 143), pod(2)], {"phase": "Running", "group": 0})
    assert plan.restarted == "RetryableExitCode"
    assert plan.phase == "Restarting" and plan.status["reason"] == "RetryableExitCode"
    assert sorted(plan.delete_pods) == ["job-worker-0-g0", "job-worker-1-g0", "job-worker-2-g0"]
    assert plan.group == 1 and plan.status["group"] == 1
    assert plan.status["restarts"] == {"total": 1, "byReason": {"RetryableExitCode": 1}, "lastReason": "RetryableExitCode",
                                       "lastTime": "2026-01-02T03:04:05Z"}  # fmt: skip
    assert plan.requeue == 10
    assert not plan.create_workers
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "Restarting")]


def test_new_group_waits_for_old_pods_and_the_backoff() -> None:
    job = spec(workers={"replicas": 2}, restartPolicy={"backoff": {"initialSeconds": 10, "maxSeconds": 300}})
    status = {"phase": "Restarting", "group": 1,
              "restarts": {"total": 1, "byReason": {"RetryableExitCode": 1}, "lastTime": "2026-01-02T03:04:05Z"}}  # fmt: skip
    plan = assess(job, [pod(0, deleting=True), pod(1, group=0)], status)
    assert plan.phase == "Restarting" and plan.status["reason"] == "WaitingForOldWorkers"
    assert plan.delete_pods == ["job-worker-1-g0"] and not plan.create_workers
    plan = assess(job, [], status, now=NOW + timedelta(seconds=4))
    assert plan.status["reason"] == "Backoff" and plan.requeue == 6 and not plan.create_workers
    plan = assess(job, [], status, now=NOW + timedelta(seconds=10))
    assert plan.create_workers and plan.group == 1 and plan.phase == "Starting"


def test_non_retryable_exit_fails_at_once_and_keeps_failed_pods() -> None:
    job = spec(workers={"replicas": 2})
    plan = assess(job, [pod(0), failed(1, 1)], {"phase": "Running", "group": 0})
    assert plan.phase == "Failed" and plan.status["reason"] == "NonRetryableExitCode"
    assert plan.status["completionTime"] == "2026-01-02T03:04:05Z"
    assert plan.delete_pods == ["job-worker-0-g0"]  # cleanPodPolicy Running: the failed one stays
    assert conditions(plan)["Stalled"] == ("True", "NonRetryableExitCode")
    assert conditions(plan)["Reconciling"][0] == "False"
    assert plan.status.get("restarts", {}).get("total", 0) == 0
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "NonRetryableExitCode")]


def test_the_first_failure_is_the_cause_and_its_peers_failing_after_it_do_not_fail_the_job() -> None:
    job, running = spec(workers={"replicas": 2}), {"phase": "Running", "group": 0}

    def exited(index: int, code: int, at: str) -> dict[str, Any]:
        return pod(index, phase="Failed", terminated={"exitCode": code, "reason": "Error", "finishedAt": at})

    # Worker 1 deleted by someone (grace 30 s, so at 03:04:00), worker 0 then loses its peer and exits 1.
    deleted = pod(1, deleting=True)
    deleted["metadata"]["deletionTimestamp"], deleted["metadata"]["deletionGracePeriodSeconds"] = "2026-01-02T03:04:30Z", 30
    plan = assess(job, [exited(0, 1, "2026-01-02T03:04:01Z"), deleted], running)
    assert plan.phase == "Restarting" and plan.restarted == "NodeLost", plan.status["message"]
    # Killed (137) and its peer's exit 1 within one second: the retryable one is the cause.
    plan = assess(job, [exited(0, 1, "2026-01-02T03:04:02Z"), exited(1, 137, "2026-01-02T03:04:02Z")], running)
    assert plan.restarted == "RetryableExitCode"
    # A real bug first, a retryable exit after it: the job fails, as the first failure says.
    plan = assess(job, [exited(0, 1, "2026-01-02T03:04:02Z"), exited(1, 143, "2026-01-02T03:04:04Z")], running)
    assert plan.phase == "Failed" and plan.status["reason"] == "NonRetryableExitCode"


def test_a_fresh_non_retryable_exit_waits_for_its_peers_still_shown_running_before_it_fails_the_job() -> None:
    """The kubelet reports each pod on its own: a peer's exit 1 can arrive before the crash that caused it."""
    job, running = spec(workers={"replicas": 2}), {"phase": "Running", "group": 0}
    exit_1 = pod(0, phase="Failed", terminated={"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-02T03:04:04Z"})
    plan = assess(job, [exit_1, pod(1)], running)  # NOW is 03:04:05: worker 1's exit may be on its way
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert plan.phase == "Running" and not plan.delete_pods and plan.requeue == 4, ready
    assert "waiting up to 5 s for the other workers' exits" in ready["message"]
    crash = pod(1, phase="Failed", terminated={"exitCode": 137, "reason": "Error", "finishedAt": "2026-01-02T03:04:04Z"})
    assert assess(job, [exit_1, crash], running).restarted == "RetryableExitCode"  # it came: the crash is the cause
    plan = assess(job, [exit_1, pod(1)], running, now=NOW + timedelta(seconds=4))
    assert plan.phase == "Failed" and plan.status["reason"] == "NonRetryableExitCode"  # nothing came in 5 s


def test_budget_spent_fails_with_backoff_limit_exceeded() -> None:
    job = spec(restartPolicy={"backoffLimit": 2})
    status = {"phase": "Running", "group": 2, "restarts": {"total": 2, "byReason": {"RetryableExitCode": 2}}}
    plan = assess(job, [failed(0, 143, group=2)], status)
    assert plan.phase == "Failed" and plan.status["reason"] == "BackoffLimitExceeded"
    assert plan.status["restarts"]["total"] == 2
    # Budgets are per reason: an OOM still has its own.
    plan = assess(job, [failed(0, 137, group=2, reason="OOMKilled")], status)
    assert plan.restarted == "OOMKilled" and plan.status["restarts"]["byReason"] == {"RetryableExitCode": 2, "OOMKilled": 1}


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(0, 5), failures=st.lists(st.sampled_from([143, 130, 137]), min_size=1, max_size=20))
def test_restarts_never_exceed_backoff_limit_per_reason(limit: int, failures: list[int]) -> None:
    """Replaying failures pass by pass: each reason restarts exactly min(failures, limit) times, then fails."""
    job = spec(restartPolicy={"backoffLimit": limit, "backoff": {"initialSeconds": 0}})
    status: dict[str, Any] = {}
    restarts_seen = 0
    for code in failures:
        group = status.get("group", 0)
        plan = assess(job, [failed(0, code, group=group)], status)
        if plan.phase == "Failed":
            assert plan.status["reason"] == "BackoffLimitExceeded"
            assert all(n == limit for n in [plan.status.get("restarts", {}).get("byReason", {}).get("RetryableExitCode", 0)])
            break
        restarts_seen += 1
        status = plan.status
        assert all(n <= limit for n in status["restarts"]["byReason"].values())
    else:
        assert restarts_seen == len(failures) <= limit
    assert restarts_seen <= limit


def test_all_workers_succeeded_and_progress_from_the_termination_message() -> None:
    done = '{"step": 120, "epoch": 3, "loss": 0.25}'
    pods = [pod(0, phase="Succeeded", terminated={"exitCode": 0, "message": done}),
            pod(1, phase="Succeeded", terminated={"exitCode": 0, "message": "not json"})]  # fmt: skip
    plan = assess(spec(workers={"replicas": 2}, output={"claimName": "models"}), pods, {"phase": "Running", "group": 0},
                  output_uri="pvc://models/output")  # fmt: skip
    assert plan.phase == "Succeeded" and plan.status["reason"] == "AllWorkersSucceeded"
    assert plan.status["progress"] == {"step": 120, "epoch": 3, "loss": 0.25, "updateTime": "2026-01-02T03:04:05Z"}
    assert plan.status["output"] == {"uri": "pvc://models/output"}
    assert conditions(plan)["Ready"] == ("True", "AllWorkersSucceeded")
    assert plan.delete_pods == []
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "AllWorkersSucceeded")]


def test_finished_is_final_and_ttl_deletes_the_job() -> None:
    job = spec(runPolicy={"ttlSecondsAfterFinished": 30})
    status = {"phase": "Succeeded", "reason": "AllWorkersSucceeded", "completionTime": "2026-01-02T03:04:05Z", "group": 0}
    plan = assess(job, [], status, now=NOW + timedelta(seconds=10))
    assert plan.phase == "Succeeded" and not plan.delete_job and plan.requeue == 20 and not plan.create_workers
    assert plan.events == []
    plan = assess(job, [], status, now=NOW + timedelta(seconds=30))
    assert plan.delete_job


def test_suspend_deletes_workers_and_resume_starts_a_new_group() -> None:
    job = spec(workers={"replicas": 2}, runPolicy={"suspend": True})
    plan = assess(job, [pod(0), pod(1)], {"phase": "Running", "group": 0})
    assert plan.phase == "Suspended" and sorted(plan.delete_pods) == ["job-worker-0-g0", "job-worker-1-g0"]
    assert plan.group == 1 and conditions(plan)["Reconciling"][0] == "False"
    resumed = spec(workers={"replicas": 2})
    plan2 = assess(resumed, [pod(0, deleting=True)], plan.status)
    assert plan2.phase == "Starting" and not plan2.create_workers and plan2.restarted is None
    plan3 = assess(resumed, [], plan2.status)
    assert plan3.create_workers and plan3.group == 1


def test_active_deadline_fails_a_running_job() -> None:
    job = spec(runPolicy={"activeDeadlineSeconds": 60})
    status = {"phase": "Running", "group": 0, "startTime": "2026-01-02T03:04:05Z"}
    plan = assess(job, [pod(0)], status, now=NOW + timedelta(seconds=20))
    assert plan.phase == "Running" and plan.requeue == 40
    plan = assess(job, [pod(0)], status, now=NOW + timedelta(seconds=60))
    assert plan.phase == "Failed" and plan.status["reason"] == "DeadlineExceeded" and plan.delete_pods == ["job-worker-0-g0"]


def test_a_vanished_running_worker_restarts_the_group_as_node_lost() -> None:
    job = spec(workers={"replicas": 2})
    plan = assess(job, [pod(0)], {"phase": "Running", "group": 0})
    assert plan.restarted == "NodeLost" and plan.group == 1
    plan = assess(job, [pod(0), pod(1, deleting=True, conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}])], {"phase": "Running", "group": 0})  # fmt: skip
    assert plan.restarted == "NodeLost"


def test_dataset_not_ready_keeps_the_job_pending() -> None:
    plan = assess(spec(dataset={"name": "images"}), [], dataset_ready=False, dataset_message="waiting for images")
    assert plan.phase == "Pending" and plan.status["reason"] == "DatasetNotReady" and not plan.create_workers


def test_a_missing_service_account_keeps_the_job_pending_and_looks_again() -> None:
    """Issue #19's fuzzing: pods naming a missing ServiceAccount were refused (403) in a ReconcileError loop."""
    plan = assess(spec(serviceAccountName="trainer"), [], service_account_missing="waiting for ServiceAccount trainer")
    assert plan.phase == "Pending" and plan.status["reason"] == "ServiceAccountNotFound" and not plan.create_workers
    assert plan.requeue == t.SERVICE_ACCOUNT_RECHECK_SECONDS
    assert "ServiceAccount trainer" in next(c["message"] for c in plan.status["conditions"] if c["type"] == "Ready")
    assert assess(spec(serviceAccountName="trainer"), []).create_workers  # once it exists


def test_an_unchanged_status_keeps_transition_times() -> None:
    job = spec(workers={"replicas": 1})
    first = assess(job, [pod(0)])
    again = assess(job, [pod(0)], first.status, now=NOW + timedelta(minutes=5))
    assert again.status == first.status and again.events == []


def test_a_worker_on_a_lost_node_restarts_the_group_or_fails_the_job() -> None:
    pods = [pod(0, node="gone"), pod(1, node="n1")]
    plan = assess(spec(workers={"replicas": 2}), pods, {"phase": "Running", "group": 0}, lost_nodes={"gone": "was deleted"})
    assert plan.restarted == "NodeLost" and "node gone was deleted" in plan.status["conditions"][1]["message"]
    plan = assess(spec(workers={"replicas": 2}, restartPolicy={"onNodeLoss": "Fail"}), pods, {"phase": "Running", "group": 0},
                  lost_nodes={"gone": "was deleted"})  # fmt: skip
    assert plan.phase == "Failed" and plan.status["reason"] == "NodeLost"


def elastic(**extra: Any) -> TrainingJobSpec:
    return spec(workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 4, "gpu": {"count": 8}}, **extra)


def test_elastic_group_starts_with_what_fits_within_bounds() -> None:
    assert assess(elastic(), [], capacity=3).replicas == 3
    assert assess(elastic(), [], capacity=9).replicas == 4
    assert assess(elastic(), [], capacity=0).replicas == 1  # waits as Pending for the minimum
    assert assess(spec(workers={"replicas": 2}), [], capacity=9).replicas == 2  # not elastic


def test_elastic_group_grows_as_a_resize_without_budget_or_backoff() -> None:
    status = {"phase": "Running", "group": 0, "workers": {"desired": 2}}
    job = elastic(restartPolicy={"backoffLimit": 0, "backoff": {"initialSeconds": 60}})
    plan = assess(job, [pod(0), pod(1)], status, capacity=2)
    assert plan.phase == "Running" and plan.restarted is None
    plan = assess(job, [pod(0), pod(1)], status, capacity=3)
    assert plan.restarted == "Resized" and plan.replicas == 3 and plan.requeue == 0
    assert plan.status["restarts"]["byReason"] == {"Resized": 1}
    assert "grows from 2 to 3" in plan.events[0].message
    following = assess(job, [], plan.status, capacity=3)
    assert following.create_workers and following.replicas == 3 and following.group == 1


def test_elastic_group_losing_a_node_shrinks_as_a_resize() -> None:
    status = {"phase": "Running", "group": 0, "workers": {"desired": 2}}
    job = elastic(restartPolicy={"backoffLimit": 0})
    plan = assess(job, [pod(0, node="gone"), pod(1)], status, capacity=1, lost_nodes={"gone": "was deleted"})
    assert plan.restarted == "Resized" and plan.replicas == 1
    assert failed_restarts_of(plan) == 0


def failed_restarts_of(plan: t.Plan) -> int:
    return failure_restarts(RestartCounts.model_validate(plan.status["restarts"]))


def test_a_job_starting_to_run_is_looked_at_again_at_its_deadline() -> None:
    plan = assess(spec(runPolicy={"activeDeadlineSeconds": 60}), [pod(0)], {"phase": "Starting", "group": 0})
    assert plan.phase == "Running" and plan.status["startTime"] == "2026-01-02T03:04:05Z" and plan.requeue == 60


RUNNING = {"phase": "Running", "group": 0, "workers": {"desired": 2}}


def test_a_live_report_advances_the_step_while_the_group_runs() -> None:
    job, pods = spec(workers={"replicas": 2}), [live_pod(0, "u0"), live_pod(1, "u1")]
    report = {"schema": PROGRESS_SCHEMA, "step": 40, "epoch": 1, "loss": 0.5}
    plan = assess(job, pods, RUNNING, live={"u0": report})
    assert plan.phase == "Running"
    assert plan.status["progress"] == {"step": 40, "epoch": 1, "loss": 0.5, "updateTime": "2026-01-02T03:04:05Z"}
    later = NOW + timedelta(seconds=10)
    advanced = assess(job, pods, plan.status, now=later, live={"u0": {**report, "step": 60, "loss": 0.4}})
    assert advanced.status["progress"] == {"step": 60, "epoch": 1, "loss": 0.4, "updateTime": "2026-01-02T03:04:15Z"}


def test_without_a_new_report_the_last_progress_and_its_time_are_kept() -> None:
    job, pods = spec(workers={"replicas": 2}), [live_pod(0, "u0"), live_pod(1, "u1")]
    shown = {"step": 40, "epoch": 1, "loss": 0.5, "updateTime": "2026-01-02T03:00:00Z"}
    previous = {**RUNNING, "progress": shown}
    # a failed poll (nothing live), the same report again, a report of a pod not in the group (an old one)
    for live in ({}, {"u0": {"step": 40, "epoch": 1, "loss": 0.5}}, {"gone": {"step": 90}}):
        assert assess(job, pods, previous, live=live).status["progress"] == shown


def test_a_group_that_skipped_a_torn_checkpoint_posts_one_warning_and_shows_it() -> None:
    job, pods = spec(workers={"replicas": 2}), [live_pod(0, "u0"), live_pod(1, "u1")]
    report = {"schema": PROGRESS_SCHEMA, "step": 101, "epoch": 1, "resumedFrom": 100,
              "tornCheckpoints": ["checkpoint-0000000200.pt"]}  # fmt: skip
    plan = assess(job, pods, RUNNING, live={"u0": report})
    warnings = [e for e in plan.events if e.reason == "CheckpointTorn"]
    assert [e.type for e in warnings] == ["Warning"] and "checkpoint-0000000200.pt was torn" in warnings[0].message
    assert "resumed from the checkpoint of step 100" in warnings[0].message
    assert plan.status["progress"]["tornCheckpoints"] == ["checkpoint-0000000200.pt"]
    later = assess(job, pods, plan.status, now=NOW + timedelta(seconds=10), live={"u0": {**report, "step": 120}})
    assert later.events == [] and later.status["progress"]["step"] == 120  # said once per group

    # The next group resumed cleanly: the list is cleared (the status is a merge patch), then stays put.
    clean = {"schema": PROGRESS_SCHEMA, "step": 201, "epoch": 2, "resumedFrom": 200}
    moved = assess(job, pods, later.status, now=NOW + timedelta(seconds=20), live={"u0": clean})
    assert moved.events == [] and moved.status["progress"]["tornCheckpoints"] == []
    again = assess(job, pods, moved.status, now=NOW + timedelta(seconds=30), live={"u0": clean})
    assert again.status["progress"] == moved.status["progress"]  # no churn: updateTime unchanged


def test_progress_is_read_from_worker_zero_of_a_running_group_only() -> None:
    job = spec(workers={"replicas": 2})
    pods = [live_pod(1, "u1"), live_pod(0, "u0")]
    plan = assess(job, pods, RUNNING)
    assert t.progress_pod(plan, pods) is pods[1]
    starting = [live_pod(0, "u0"), live_pod(1, "u1", phase="Pending", ready=False)]
    assert t.progress_pod(assess(job, starting, RUNNING), starting) is None


def test_the_pass_that_finishes_a_job_comes_back_when_its_ttl_is_due() -> None:
    done = pod(0, phase="Succeeded", terminated={"exitCode": 0, "message": '{"step": 1}'})
    plan = assess(spec(runPolicy={"ttlSecondsAfterFinished": 30}), [done], {"phase": "Running", "group": 0})
    assert plan.phase == "Succeeded" and plan.requeue == 30 and not plan.delete_job
    assert assess(spec(), [done], {"phase": "Running", "group": 0}).requeue is None  # no TTL: nothing to come back for
