"""TrainingJob: from observed worker pods to the job's status and the next step, as pure functions.

:func:`assess` is the whole decision of one reconcile pass. It reads the spec,
the status written last time (the group generation, the restart budget spent,
start and completion times) and the worker pods that exist now, and returns a
:class:`Plan`: the status to write, the pods to delete, whether to create the
current group's missing workers, when to look again, and the events to post.
The controller only carries the plan out, so every rule below is unit-tested
without a cluster.

Rules, in order of precedence:

* Succeeded and Failed are final (the pods that proved them may be cleaned
  away); a finished job is deleted ``ttlSecondsAfterFinished`` after it ended.
* ``suspend`` deletes every worker and keeps the job (phase Suspended).
* ``activeDeadlineSeconds`` counted from the first start fails the job.
* A group is all or nothing: Running only when every worker of the current
  group runs. Workers the scheduler cannot place make the job Pending with the
  scheduler's own reason (``0/4 nodes are available: Insufficient nvidia.com/gpu``).
  A group that gang admission holds back (``Observed.held``: not all of it fits
  at once, so its pods keep their scheduling gate) is Pending with reason
  WaitingForCapacity and says how many workers fit now, or Unschedulable with
  the short resource when it would not fit even on empty nodes.
* A failed worker fails its group, and so does a worker on a lost node (deleted,
  or NotReady past ``nodeLossGraceSeconds``; ``onNodeLoss: Fail`` fails the job).
  The failure is classified (``training_failures.classify``): a retryable exit
  code, OOMKilled, a lost node, a preemption, or a non-retryable exit code. The
  first failure is the cause (``training_failures.first_failure``): the peers of
  a killed worker fail right after it, and are not held against the job
  (Kubeflow #1579). Each retryable reason has its own budget of
  ``backoffLimit`` group restarts; the restart after the budget is spent fails
  the job instead (so exactly ``backoffLimit`` restarts happen per reason). A
  non-retryable exit fails the job at once.
* Elastic jobs (``minReplicas < maxReplicas``) are sized to the workers the
  cluster can host (``Observed.capacity``) within the bounds; a running group
  whose size no longer matches restarts at the new size, and so does one that
  lost a node. These membership changes are counted as ``Resized``, apart from
  failures: no budget, no backoff. A change of ``replicas`` resizes the same way.
* A restart bumps the group generation (``status.group``), deletes the old
  group, and creates the new one once every old pod is gone and the backoff
  (``initialSeconds * 2**(restarts - 1)``, capped at ``maxSeconds``) has passed.
  ``suspend`` bumps it too, so a resumed group never meets a pod of the old one.

Progress: the trainer's reports (live from worker 0's ``GET /progress``, passed
in ``Observed.live``, and in the termination messages) are parsed and ranked in
``training_progress``; ``status.progress`` keeps the last one when nothing new
arrives (a failed poll clears nothing), and ``updateTime`` changes only when the
values do. A report that names torn checkpoints the status does not show yet
(the trainer skipped them to resume from an older one) posts a Warning event
``CheckpointTorn``.

This module holds the decision only. What one pod says (its group, index, state,
why it waits) is ``training_pods``; why a worker failed and whether that
restarts the group or fails the job is ``training_failures``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from lepton_operator.api.training import (
    RestartCounts,
    TrainingJobSpec,
    TrainingJobStatus,
    TrainingPhase,
)
from lepton_operator.status import capacity, claims
from lepton_operator.status.capacity import Held
from lepton_operator.status import conditions as cond
from lepton_operator.status.conditions import parse_time
from lepton_operator.status.training_failures import (
    NODE_LOST,
    PREEMPTED,
    RESIZED,
    Failure,
    classify,
    decide,
    first_failure,
    lost,
    restart_delay,
)
from lepton_operator.status.training_pods import (
    blocked_message,
    pod_group,
    pod_index,
    pod_name,
    pod_status,
    ready,
    running,
    succeeded,
    terminating,
    unschedulable_message,
)
from lepton_operator.status.training_progress import TORN_CHECKPOINT, cleared, progress_of, torn_checkpoint_message

DEADLINE_EXCEEDED = "DeadlineExceeded"

WORKERS_SCHEDULED = "WorkersScheduled"
UNSCHEDULABLE = capacity.UNSCHEDULABLE
WAITING_FOR_CAPACITY = capacity.WAITING_FOR_CAPACITY
#: A worker's container cannot start (image, config or security context): it waits forever, so say why.
CONTAINER_BLOCKED = "ContainerBlocked"

FINAL: tuple[TrainingPhase, ...] = ("Succeeded", "Failed")
#: The job names a ServiceAccount that does not exist; the workers are created once it does.
SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
#: How often a job waiting for its ServiceAccount looks again (nothing wakes it when one appears).
SERVICE_ACCOUNT_RECHECK_SECONDS = 10.0
#: How long a fresh non-retryable failure waits for its peers' exits while they still show running.
PEER_SETTLE_SECONDS = 5.0

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    """An event to post on the job."""

    type: EventType
    reason: str
    message: str


@dataclass
class Plan:
    """What one reconcile pass found and must do; the controller carries it out."""

    status: dict[str, Any]
    group: int
    replicas: int
    create_workers: bool = False
    delete_pods: list[str] = field(default_factory=list)
    delete_job: bool = False
    requeue: float | None = None
    events: list[Event] = field(default_factory=list)
    restarted: str | None = None
    """The reason of a group restart decided in this pass (count it before deleting pods)."""

    @property
    def phase(self) -> str:
        return str(self.status.get("phase"))


@dataclass(frozen=True)
class Observed:
    """What a pass sees besides the job itself."""

    pods: Sequence[Mapping[str, Any]]
    now: datetime
    dataset_ready: bool = True
    dataset_message: str = ""
    capacity: int | None = None
    """Workers of this job the cluster can host now (elastic jobs; see ``status.capacity``)."""
    output_uri: str | None = None
    """Where the export lands (``render.training.output_uri``)."""
    lost_nodes: Mapping[str, str] = field(default_factory=dict)
    """Nodes known lost (deleted, or NotReady past the grace period), with why."""
    live: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The last ``/progress`` document read from a running worker, by pod uid (see ``controllers.progress``)."""
    claims: Sequence[Mapping[str, Any]] = ()
    """The claims the workers mount, as read while some worker has no node yet (else empty)."""
    held: Held | None = None
    """Why the group is not admitted to the scheduler yet (gang admission), or ``None``."""
    service_account_missing: str = ""
    """Why the workers cannot be created yet: their ServiceAccount does not exist (the API server
    refuses a pod naming a missing one). Empty when it exists, or when the job names none."""


def assess(
    spec: TrainingJobSpec, generation: int, existing: Mapping[str, Any] | None, observed: Observed
) -> Plan:
    """The plan of one reconcile pass; see the module docstring."""
    plan = _assess(spec, generation, existing, observed)
    ttl = spec.run_policy.ttl_seconds_after_finished
    if plan.phase in FINAL and ttl is not None and plan.requeue is None and not plan.delete_job:
        # Finished in this very pass: nothing else may wake the job when its TTL is due.
        plan.requeue = float(ttl)
    deadline = spec.run_policy.active_deadline_seconds
    started = parse_time(plan.status.get("startTime"))
    if deadline is not None and started is not None and plan.phase not in FINAL:
        # Also when the job started in this very pass: nothing else would wake it at its deadline.
        left = (started + timedelta(seconds=deadline) - observed.now).total_seconds()
        plan.requeue = _sooner(plan.requeue, max(left, 0.0))
    return plan


def _assess(
    spec: TrainingJobSpec, generation: int, existing: Mapping[str, Any] | None, observed: Observed
) -> Plan:
    previous = TrainingJobStatus.model_validate(dict(existing or {}))
    now = cond.format_time(observed.now)
    restarts = previous.restarts or RestartCounts()
    group = previous.group if previous.group is not None else restarts.total
    pods = list(observed.pods)
    target = target_size(spec, observed.capacity)
    has_group = any(pod_group(p) == group for p in pods)
    same_group = has_group and previous.group == group and previous.workers is not None and previous.workers.desired > 0
    replicas = previous.workers.desired if same_group and previous.workers else target
    current = [p for p in pods if pod_group(p) == group and not terminating(p)]
    stale = [p for p in pods if pod_group(p) != group and not terminating(p)]
    going = [p for p in pods if terminating(p)]
    builder = _Builder(spec, generation, previous, now, group, replicas, current, observed.output_uri, observed.live)
    plan = builder.plan

    if previous.phase in FINAL and previous.completion_time:
        builder.finish(previous.phase, previous.reason or previous.phase, _message(previous), event=False)
        builder.clean_up(pods)
        ttl = spec.run_policy.ttl_seconds_after_finished
        finished = parse_time(previous.completion_time)
        if ttl is not None and finished is not None:
            due = (finished + timedelta(seconds=ttl) - observed.now).total_seconds()
            plan.delete_job = due <= 0
            plan.requeue = None if due <= 0 else due
        return plan

    if spec.run_policy.suspend:
        plan.delete_pods = [pod_name(p) for p in pods if not terminating(p)]
        if any(pod_group(p) == group for p in pods):
            plan.group = group + 1  # the resumed group is a new one: it never meets these pods
        return builder.set("Suspended", "Suspended", "the job is suspended; its workers are deleted")

    deadline = spec.run_policy.active_deadline_seconds
    started = parse_time(previous.start_time)
    if deadline is not None and started is not None:
        left = (started + timedelta(seconds=deadline) - observed.now).total_seconds()
        if left <= 0:
            builder.finish("Failed", DEADLINE_EXCEEDED, f"the job ran longer than activeDeadlineSeconds ({deadline} s)")
            builder.clean_up(pods)
            return plan
        plan.requeue = left

    plan.delete_pods = [pod_name(p) for p in stale]
    failures = [f for f in (classify(p, spec.restart_policy) for p in current) if f is not None]
    for p in current:
        node = str((p.get("spec") or {}).get("nodeName") or "")
        if node in observed.lost_nodes and not succeeded(p) and classify(p, spec.restart_policy) is None:
            replace = spec.restart_policy.on_node_loss == "Replace"
            failures.append(Failure(NODE_LOST, replace, f"worker {pod_name(p)}'s node {node} {observed.lost_nodes[node]}"))
    failures += [lost(p, spec.restart_policy) for p in going if pod_group(p) == group]
    missing = set(range(replicas)) - {pod_index(p) for p in pods if pod_group(p) == group}
    if missing and previous.phase == "Running" and group == previous.group:
        node_loss_ok = spec.restart_policy.on_node_loss == "Replace"
        gone = ", ".join(str(i) for i in sorted(missing))
        failures.append(Failure(NODE_LOST, node_loss_ok, f"running worker(s) {gone} vanished (node lost or pod deleted)"))
    if not failures and current and replicas != target:
        change = "grows" if target > replicas else "shrinks"
        failures.append(Failure(RESIZED, True, f"the group {change} from {replicas} to {target} workers"))
    if failures:
        failure = first_failure(failures)
        settling = _peers_settling(failure, current, spec, observed.now)
        if settling is not None:
            plan.requeue = _sooner(plan.requeue, settling)
            return builder.set(previous.phase or "Running", failure.reason,
                               f"{failure.message}; waiting up to {PEER_SETTLE_SECONDS:g} s for the other workers'"
                               " exits, one of which may be the cause")  # fmt: skip
        if spec.workers.elastic and failure.retryable and failure.reason in (NODE_LOST, PREEMPTED):
            # Capacity went away: a membership change of an elastic job, not a failure.
            failure = Failure(RESIZED, True, f"{failure.message}; the group resizes to the GPUs left")
        decision = decide(failure, restarts, spec.restart_policy, now)
        if not decision.restart:
            builder.finish("Failed", decision.reason, decision.message)
            builder.clean_up(pods)
            return plan
        plan.restarted = decision.reason
        plan.group = group + 1
        plan.delete_pods += [pod_name(p) for p in current]
        plan.replicas = target
        builder.restarts = decision.restarts
        builder.current = []
        delay = restart_delay(spec.restart_policy, decision.restarts)
        plan.requeue = _sooner(plan.requeue, delay)
        message = f"restart {decision.restarts.total}: {decision.message}; new group in {delay:.0f} s"
        plan.events.append(Event("Warning", "Restarting", message))
        return builder.set("Restarting", decision.reason, message)

    if current and all(succeeded(p) for p in current) and len(current) >= replicas:
        builder.finish("Succeeded", "AllWorkersSucceeded", f"all {replicas} workers completed")
        builder.clean_up(pods)
        return plan

    if not current and not observed.dataset_ready:
        return builder.set("Pending", "DatasetNotReady", observed.dataset_message or "waiting for the dataset")

    if not current and observed.service_account_missing:
        plan.requeue = _sooner(plan.requeue, SERVICE_ACCOUNT_RECHECK_SECONDS)
        return builder.set("Pending", SERVICE_ACCOUNT_NOT_FOUND, observed.service_account_missing)

    if going or stale:
        phase: TrainingPhase = "Restarting" if restarts.total > 0 else "Starting"
        return builder.set(phase, "WaitingForOldWorkers", f"waiting for {len(going) + len(stale)} old worker pods to go")

    last_restart = parse_time(restarts.last_time)
    if restarts.total > 0 and not current and last_restart is not None:
        wait = last_restart + timedelta(seconds=restart_delay(spec.restart_policy, restarts)) - observed.now
        if wait.total_seconds() > 0:
            plan.requeue = _sooner(plan.requeue, wait.total_seconds())
            return builder.set("Restarting", "Backoff", f"next group starts in {wait.total_seconds():.0f} s")

    indices = {pod_index(p) for p in current}
    if len(indices & set(range(replicas))) < replicas:
        plan.create_workers = True
    if observed.held is not None:
        return builder.set("Pending", observed.held.reason, observed.held.message)
    if plan.create_workers and not current:
        return builder.set("Starting", "WorkersCreated", f"creating {replicas} workers (group {group})")

    waiting = [m for m in (claims.unbound(c) for c in observed.claims) if m]
    if waiting and any(not (p.get("spec") or {}).get("nodeName") for p in current):
        return builder.set("Pending", claims.CLAIM_PENDING, f"the workers wait for a volume: {waiting[0]}")
    unschedulable = [m for m in (unschedulable_message(p) for p in current) if m]
    if unschedulable:
        message = f"{len(unschedulable)} of {replicas} workers cannot be scheduled: {unschedulable[0]}"
        return builder.set("Pending", UNSCHEDULABLE, message)
    blocked = [m for m in (blocked_message(p) for p in current) if m]
    if blocked:
        message = f"{len(blocked)} of {replicas} workers cannot start: {blocked[0]}"
        return builder.set("Pending", CONTAINER_BLOCKED, message)
    runs = sum(1 for p in current if running(p) or succeeded(p))
    if runs >= replicas and not plan.create_workers:
        return builder.set("Running", "AllWorkersRunning", f"all {replicas} workers are running")
    return builder.set("Starting", "WorkersStarting", f"{runs} of {replicas} workers are running")


def progress_pod(plan: Plan, pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The pod whose live progress to read: worker 0 of a Running group (global rank 0 runs there)."""
    if plan.phase != "Running":
        return None
    return next((p for p in pods if pod_group(p) == plan.group and pod_index(p) == 0 and running(p)), None)


def target_size(spec: TrainingJobSpec, capacity: int | None) -> int:
    """Workers the next group should have: ``replicas``, or for an elastic job what fits in [min, max]."""
    workers = spec.workers
    if not workers.elastic or capacity is None:
        return workers.replicas
    low, high = workers.min_replicas or workers.replicas, workers.max_replicas or workers.replicas
    return max(low, min(high, capacity))


def _peers_settling(failure: Failure, current: Sequence[Mapping[str, Any]], spec: TrainingJobSpec,
                    now: datetime) -> float | None:  # fmt: skip
    """Seconds to wait before a non-retryable failure may fail the job, or ``None`` to decide now.

    When one worker crashes, its peers exit with 1 a moment later, and the kubelet reports each
    pod on its own: a pass can see a peer's exit 1 before the crash that caused it. Deciding
    then fails the job (non-retryable) where the crash alone would restart it, as the full-path
    test once saw. So a fresh non-retryable failure, with workers of the group still shown
    running, waits up to :data:`PEER_SETTLE_SECONDS` from its time for their exits to arrive;
    :func:`~lepton_operator.status.training_failures.first_failure` then picks the cause.
    """
    if failure.retryable or failure.at is None:
        return None
    alive = [p for p in current if classify(p, spec.restart_policy) is None and not succeeded(p)]
    left = (failure.at + timedelta(seconds=PEER_SETTLE_SECONDS) - now).total_seconds()
    return left if alive and left > 0 else None


def _sooner(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def _message(status: TrainingJobStatus) -> str:
    found = cond.find(status.conditions or [], cond.READY)
    return found.message if found is not None else ""


class _Builder:
    """Assembles the status of a plan from a phase; one place for conditions and counts."""

    def __init__(self, spec: TrainingJobSpec, generation: int, previous: TrainingJobStatus, now: str,
                 group: int, replicas: int, current: list[Mapping[str, Any]], output_uri: str | None,
                 live: Mapping[str, Mapping[str, Any]]) -> None:  # fmt: skip
        self.output_uri = output_uri
        self.live = live
        self.spec = spec
        self.generation = generation
        self.previous = previous
        self.now = now
        self.restarts = previous.restarts or RestartCounts()
        self.current = current
        self.completion_time = previous.completion_time
        self.plan = Plan(status={}, group=group, replicas=replicas)

    def clean_up(self, pods: Sequence[Mapping[str, Any]]) -> None:
        """Delete the pods of a finished job that ``cleanPodPolicy`` does not keep."""
        policy = self.spec.run_policy.clean_pod_policy
        if policy == "All":
            doomed = [p for p in pods if not terminating(p)]
        elif policy == "Running":
            doomed = [p for p in pods if not terminating(p) and pod_status(p).get("phase") in ("Pending", "Running", None)]
        else:
            doomed = []
        self.plan.delete_pods = [pod_name(p) for p in doomed]

    def finish(self, phase: TrainingPhase, reason: str, message: str, *, event: bool = True) -> Plan:
        self.completion_time = self.completion_time or self.now
        if event:
            self.plan.events.append(Event("Normal" if phase == "Succeeded" else "Warning", reason, message))
        return self.set(phase, reason, message)

    def set(self, phase: TrainingPhase, reason: str, message: str) -> Plan:
        previous = self.previous
        if phase != previous.phase and not self.plan.events:
            kind: EventType = "Warning" if phase in ("Failed",) or reason in (UNSCHEDULABLE, WAITING_FOR_CAPACITY) else "Normal"
            self.plan.events.append(Event(kind, phase, message))
        gen = self.generation
        start_time = previous.start_time or (self.now if phase == "Running" else None)
        current = self.current
        unschedulable = [m for m in (unschedulable_message(p) for p in current) if m]
        scheduled = bool(current) and all((p.get("spec") or {}).get("nodeName") for p in current)
        if unschedulable:
            scheduling = cond.make(WORKERS_SCHEDULED, False, UNSCHEDULABLE, message, gen)
        elif reason in (claims.CLAIM_PENDING, WAITING_FOR_CAPACITY, UNSCHEDULABLE):
            scheduling = cond.make(WORKERS_SCHEDULED, False, reason, message, gen)
        elif scheduled:
            scheduling = cond.make(WORKERS_SCHEDULED, True, "AllWorkersScheduled", "every worker has a node", gen)
        else:
            scheduling = cond.make(WORKERS_SCHEDULED, False, "WaitingForWorkers", "not every worker has a node", gen)
        new = [
            cond.make(cond.VALIDATED, True, "Valid", "spec is valid", gen),
            cond.ready(phase in ("Running", "Succeeded"), reason, message, gen),
            cond.reconciling(phase in ("Pending", "Starting", "Restarting"), reason, message, gen),
            cond.stalled(phase == "Failed", reason, message, gen),
            scheduling,
        ]
        conditions = cond.set_conditions(previous.conditions or [], new, self.now)
        workers = {
            "desired": self.plan.replicas,
            "active": sum(1 for p in current if pod_status(p).get("phase") in ("Pending", "Running", None)),
            "ready": sum(1 for p in current if ready(p)),
            "succeeded": sum(1 for p in current if succeeded(p)),
            "failed": sum(1 for p in current if pod_status(p).get("phase") == "Failed"),
        }
        progress = previous.progress.to_wire() if previous.progress else None
        reported = progress_of(current, self.live)
        if reported is not None:
            reported = cleared(reported, progress)
            torn = torn_checkpoint_message(progress, reported)
            if torn is not None:
                self.plan.events.append(Event("Warning", TORN_CHECKPOINT, torn))
        if reported is not None and {k: v for k, v in (progress or {}).items() if k != "updateTime"} != reported:
            progress = {**reported, "updateTime": self.now}
        output = self.output_uri
        status = TrainingJobStatus.model_validate(
            {
                "phase": phase,
                "reason": reason,
                "observedGeneration": gen,
                "conditions": [c.to_wire() for c in conditions],
                "workers": workers,
                "restarts": self.restarts.to_wire(),
                "group": self.plan.group,
                "startTime": start_time,
                "completionTime": self.completion_time,
                "progress": progress,
                "output": {"uri": output} if output else None,
            }
        )
        self.plan.status = status.to_wire()
        return self.plan
