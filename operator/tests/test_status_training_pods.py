"""What one worker pod says: its group and index, its state, when it was deleted, and why it waits."""

from __future__ import annotations

from datetime import UTC, datetime

from lepton_operator.status import training_pods as w
from worker_pods import pod


def test_group_and_index_come_from_the_labels_and_an_odd_label_is_none() -> None:
    worker = pod(3, group=2)
    assert (w.pod_group(worker), w.pod_index(worker), w.pod_name(worker)) == (2, 3, "job-worker-3-g2")
    worker["metadata"]["labels"] = {"lepton.ai/group": "-1", "lepton.ai/worker-index": "x"}
    assert (w.pod_group(worker), w.pod_index(worker)) == (None, None)
    assert (w.pod_group({}), w.pod_index({})) == (None, None)


def test_a_terminating_pod_neither_runs_nor_is_ready() -> None:
    assert w.running(pod(0)) and w.ready(pod(0)) and not w.terminating(pod(0))
    assert not w.ready(pod(0, ready=False)) and w.running(pod(0, ready=False))
    going = pod(0, deleting=True)
    assert w.terminating(going) and not w.running(going) and not w.ready(going)
    assert w.succeeded(pod(0, phase="Succeeded")) and not w.succeeded(pod(0))
    assert not w.running(pod(0, phase="Pending", ready=False))


def test_deleted_at_is_the_deletion_timestamp_less_the_grace_period() -> None:
    assert w.deleted_at(pod(0)) is None
    going = pod(0, deleting=True)
    going["metadata"]["deletionTimestamp"], going["metadata"]["deletionGracePeriodSeconds"] = "2026-01-02T03:04:30Z", 30
    assert w.deleted_at(going) == datetime(2026, 1, 2, 3, 4, 0, tzinfo=UTC)


def test_the_schedulers_message_or_a_default_for_an_unschedulable_worker() -> None:
    message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    stuck = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    assert w.unschedulable_message(pod(0, phase="Pending", node=None, conditions=[stuck])) == message
    silent = {k: v for k, v in stuck.items() if k != "message"}
    assert w.unschedulable_message(pod(0, phase="Pending", conditions=[silent])) == "the scheduler cannot place the worker"
    gated = {**stuck, "reason": "SchedulingGated"}
    assert w.unschedulable_message(pod(0, phase="Pending", conditions=[gated])) is None
    assert w.unschedulable_message(pod(0)) is None


def test_a_container_that_cannot_start_is_blocked_and_one_being_created_is_not() -> None:
    blocked = pod(1, phase="Pending", ready=False)
    blocked["status"]["initContainerStatuses"] = [{"name": "fetch", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]
    assert w.blocked_message(blocked) == "worker job-worker-1-g0 ImagePullBackOff"
    creating = pod(1, phase="Pending", ready=False)
    creating["status"]["containerStatuses"] = [{"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}]
    assert w.blocked_message(creating) is None


def test_the_terminated_state_and_conditions_of_a_pod() -> None:
    ended = pod(0, phase="Failed", terminated={"exitCode": 1, "reason": "Error"})
    assert w.terminated_state(ended) == {"exitCode": 1, "reason": "Error"}
    assert w.terminated_state(pod(0)) is None
    assert w.pod_condition(pod(0), "Ready") == {"type": "Ready", "status": "True"}
    assert w.pod_condition(pod(0), "DisruptionTarget") is None
