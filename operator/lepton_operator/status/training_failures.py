"""Why a TrainingJob's group failed, and whether it restarts or the job fails, as pure functions.

A failed worker fails its group, and so does a worker on a lost node (deleted,
or NotReady past ``nodeLossGraceSeconds``; ``onNodeLoss: Fail`` makes that a
failure of the job). :func:`classify` says why one worker failed, from its pod
alone: a retryable exit code, OOMKilled (retryable when 137 is), a lost node, a
preemption, or a non-retryable exit code. Order matters there: a disruption
(node loss, preemption) is the cause even when the container then exits with
SIGTERM's code. :func:`lost` says why a worker the operator did not delete is
going.

The first failure is the cause (:func:`first_failure`): the peers of a killed
worker fail right after it, and are not held against the job (Kubeflow #1579).

:func:`decide` turns that cause into a restart or the end of the job. Each
retryable reason has its own budget of ``backoffLimit`` group restarts; the
restart after the budget is spent fails the job with BackoffLimitExceeded
instead (so exactly ``backoffLimit`` restarts happen per reason). A
non-retryable exit fails the job at once. Membership changes of elastic jobs
(``Resized``) are restarts but not failures: no budget, no backoff. The group
of a failure restart starts after a backoff of ``initialSeconds * 2**(restarts
- 1)``, capped at ``maxSeconds``, counting failure restarts only
(:func:`restart_delay`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lepton_operator.api.training import RestartCounts, RestartPolicy
from lepton_operator.status.conditions import parse_time
from lepton_operator.status.training_pods import (
    deleted_at,
    meta,
    pod_condition,
    pod_name,
    pod_status,
    terminated_state,
    terminating,
)

# Failure reasons (restart budgets are kept per reason).
RETRYABLE_EXIT_CODE = "RetryableExitCode"
NON_RETRYABLE_EXIT_CODE = "NonRetryableExitCode"
OOM_KILLED = "OOMKilled"
NODE_LOST = "NodeLost"
PREEMPTED = "Preempted"
RESIZED = "Resized"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"

# Reasons in pod conditions (DisruptionTarget) and pod status, as Kubernetes writes them.
_NODE_LOSS_DISRUPTIONS = {"DeletionByTaintManager", "DeletionByPodGC", "TerminationByKubelet"}
_PREEMPTIONS = {"PreemptionByScheduler", "EvictionByEvictionAPI"}


@dataclass(frozen=True)
class Failure:
    """Why one worker failed, whether that may restart the group, and when it happened (if known)."""

    reason: str
    retryable: bool
    message: str
    at: datetime | None = None


def first_failure(failures: Sequence[Failure]) -> Failure:
    """The failure that brought the group down: the first one.

    When one worker dies, its peers fail right after it (torchrun's workers lose their
    connection and exit with 1, a non-retryable code): those are consequences, and taking one
    of them for the cause would fail a job that one killed worker should only restart. So the
    earliest failure is the cause. One seen without a time (a node NotReady, a vanished pod)
    counts as earliest; among equally early ones (the API's times have whole seconds) a
    retryable one wins, as a peer failing in the same second is most likely its consequence.
    """
    return min(failures, key=lambda f: (f.at is not None, f.at or datetime.min, not f.retryable))


def classify(pod: Mapping[str, Any], policy: RestartPolicy) -> Failure | None:
    """Why a worker pod failed (``None`` when it has not).

    Order matters: a disruption (node loss, preemption) is the cause even when
    the container then exits with SIGTERM's code; OOMKilled is told apart from
    other SIGKILLs by the kubelet's reason.
    """
    status = pod_status(pod)
    phase = status.get("phase")
    disruption = pod_condition(pod, "DisruptionTarget")
    cause = str(disruption.get("reason")) if disruption and disruption.get("status") == "True" else ""
    name = str(meta(pod).get("name", "?"))
    node_loss_ok = policy.on_node_loss == "Replace"
    disrupted = parse_time((disruption or {}).get("lastTransitionTime")) if cause else None
    if phase == "Unknown" or status.get("reason") == "NodeLost" or (cause in _NODE_LOSS_DISRUPTIONS and terminating(pod)):
        return Failure(NODE_LOST, node_loss_ok, f"worker {name} lost its node ({cause or status.get('reason') or phase})", disrupted)
    if phase != "Failed":
        return None
    if cause in _PREEMPTIONS or status.get("reason") in ("Evicted", "Preempting"):
        return Failure(PREEMPTED, True, f"worker {name} was preempted ({cause or status.get('reason')})", disrupted)
    if cause in _NODE_LOSS_DISRUPTIONS:
        return Failure(NODE_LOST, node_loss_ok, f"worker {name} lost its node ({cause})", disrupted)
    terminated = terminated_state(pod) or {}
    code, ended = terminated.get("exitCode"), parse_time(terminated.get("finishedAt"))
    detail = f"exit code {code}" + (f", {terminated['reason']}" if terminated.get("reason") else "")
    if terminated.get("reason") == OOM_KILLED:
        return Failure(OOM_KILLED, 137 in policy.retryable_exit_codes, f"worker {name} was OOMKilled ({detail})", ended)
    if isinstance(code, int) and code in policy.retryable_exit_codes:
        return Failure(RETRYABLE_EXIT_CODE, True, f"worker {name} failed with retryable {detail}", ended)
    return Failure(NON_RETRYABLE_EXIT_CODE, False, f"worker {name} failed with non-retryable {detail}", ended)


def lost(pod: Mapping[str, Any], policy: RestartPolicy) -> Failure:
    """Why a worker of the current group is being deleted by someone else than the operator."""
    found = classify(pod, policy)
    if found is not None:
        return found
    disruption = pod_condition(pod, "DisruptionTarget")
    cause = str(disruption.get("reason")) if disruption and disruption.get("status") == "True" else ""
    if cause in _PREEMPTIONS:
        return Failure(PREEMPTED, True, f"worker {pod_name(pod)} was preempted ({cause})", deleted_at(pod))
    return Failure(NODE_LOST, policy.on_node_loss == "Replace", f"worker {pod_name(pod)} was deleted ({cause or 'by someone else'})",
                   deleted_at(pod))  # fmt: skip


def backoff_seconds(policy: RestartPolicy, restarts: int) -> float:
    """Delay before the group of the ``restarts``-th failure restart starts (exponential, capped)."""
    if restarts <= 0:
        return 0.0
    return float(min(policy.backoff.initial_seconds * 2 ** min(restarts - 1, 32), policy.backoff.max_seconds))


@dataclass(frozen=True)
class Decision:
    """What a failed group leads to."""

    restart: bool
    reason: str
    message: str
    restarts: RestartCounts


def failure_restarts(restarts: RestartCounts) -> int:
    """Restarts caused by failures (membership changes of elastic jobs are not failures)."""
    return restarts.total - (restarts.by_reason or {}).get(RESIZED, 0)


def restart_delay(policy: RestartPolicy, restarts: RestartCounts) -> float:
    """Delay before the group of the latest restart starts: none after a resize, else the backoff."""
    if restarts.last_reason == RESIZED:
        return 0.0
    return backoff_seconds(policy, failure_restarts(restarts))


def decide(failure: Failure, restarts: RestartCounts, policy: RestartPolicy, now: str) -> Decision:
    """Restart the group (budget left for this reason, or a resize) or fail the job."""
    if not failure.retryable:
        return Decision(False, failure.reason, failure.message, restarts)
    spent = (restarts.by_reason or {}).get(failure.reason, 0)
    if spent >= policy.backoff_limit and failure.reason != RESIZED:
        message = f"{failure.message}; backoffLimit {policy.backoff_limit} reached for {failure.reason}"
        return Decision(False, BACKOFF_LIMIT_EXCEEDED, message, restarts)
    by_reason = {**(restarts.by_reason or {}), failure.reason: spent + 1}
    counted = RestartCounts(total=restarts.total + 1, by_reason=by_reason, last_reason=failure.reason, last_time=now)
    return Decision(True, failure.reason, failure.message, counted)
