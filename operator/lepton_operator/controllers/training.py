"""kopf wiring and the reconciler of TrainingJob: carry out the plan ``status.training`` makes.

One pass (run by ``loop``, one loop per job): validate the spec (an invalid one
is reported by ``reconcile.reconcile`` and nothing else happens), read the
job's worker pods by label and its dataset, let :func:`status.training.assess`
decide, then act in an order that survives a crash at any point (the workers'
NetworkPolicy, ``render.network``, is synced before all of it by
``network.POLICIES``: once per generation, deleted when disabled):

1. a group restart is written to status *before* the old pods are deleted, so
   the restart is counted exactly once even if the pass dies right after;
2. pods the plan drops are deleted;
3. the Service, the checkpoint claim and the current group's missing workers
   are applied (server-side apply: idempotent);
4. the status is returned to the loop as a merge patch, with events for phase
   changes and restarts, and the time of the next pass (a backoff, the
   deadline, the TTL) as the loop's requeue delay.

Pod events wake the job's loop (``loop.wake_owner_on``), its dataset and the
nodes its workers run on wake it too (``DatasetUsers``, ``NodeWatch``), so no
pass waits for the periodic resync. While the job is Running, the pass asks
the progress poller (``progress``) to read worker 0's ``/progress``; a changed
report wakes the loop, and the next pass merges it into ``status.progress``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
from pydantic import ValidationError

from lepton_operator import metrics
from lepton_operator.api.meta import API_VERSION, GROUP, LEPTON_DATASET, TRAINING_JOB, VERSION
from lepton_operator.api.training import TrainingJobSpec
from lepton_operator.controllers import admission, kube, loop, network, reconcile
from lepton_operator.controllers.admission import ADMISSION
from lepton_operator.controllers.config import retry_delay
from lepton_operator.controllers.deleted import DELETED
from lepton_operator.controllers.progress import PROGRESS, target_of
from lepton_operator.controllers.reconcile import Logger, Warn
from lepton_operator.controllers.wakeups import WAKEUPS, ObjectKey
from lepton_operator.render import common
from lepton_operator.render import training as render
from lepton_operator.status import capacity
from lepton_operator.status import training as assessing
from lepton_operator.status.training_pods import pod_group, pod_index, pod_name, terminating
from lepton_operator.status import validation

KIND = TRAINING_JOB.kind
DATASET_KIND = LEPTON_DATASET.kind
GPU_RESOURCE = common.GPU_RESOURCE
#: How often an elastic job looks for capacity that no node event announced (pods of others ending).
ELASTIC_RECHECK_SECONDS = 30.0
#: Threads creating one group's pods side by side (a pass waits for all of them).
CREATORS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="training-create")
#: Posts an event on the job: (type, reason, message).
Poster = Callable[[str, str, str], None]


def kopf_poster(body: Mapping[str, Any]) -> Poster:
    """Events through kopf (Normal ones too: explicit events are not filtered by the posting level)."""

    def post(event_type: str, reason: str, message: str) -> None:
        kopf.event(cast(kopf.Body, dict(body)), type=event_type, reason=reason, message=message)

    return post


def dataset_readiness(namespace: str, spec: TrainingJobSpec) -> tuple[bool, str]:
    """Whether the job's dataset is Ready (a job without one needs nothing), and why not."""
    if spec.dataset is None:
        return True, ""
    found = kube.get(API_VERSION, DATASET_KIND, namespace, spec.dataset.name)
    if found is None:
        return False, f"waiting for LeptonDataset {spec.dataset.name}, which does not exist"
    phase = (found.get("status") or {}).get("phase")
    if phase != "Ready":
        return False, f"waiting for LeptonDataset {spec.dataset.name} to be Ready (it is {phase or 'new'})"
    return True, ""


def service_account_missing(namespace: str, spec: TrainingJobSpec, pods: list[dict[str, Any]]) -> str:
    """Why the workers cannot be created yet: the ServiceAccount they name is missing ("" if not).

    The API server refuses (403) every pod that names a missing ServiceAccount;
    one created later lets them in, so this is a wait, not an error. Read only
    while the job has no pods (existing pods were admitted already).
    """
    name = spec.service_account_name
    if name is None or pods or kube.get("v1", "ServiceAccount", namespace, name) is not None:
        return ""
    return f"waiting for ServiceAccount {name}, which does not exist (the API server refuses pods that name it)"


def elastic_capacity(key: ObjectKey, uid: str, spec: TrainingJobSpec) -> int | None:
    """Workers of an elastic GPU job the cluster can host now, counting what the job holds as its own.

    Asked of the admission's listing, so sizing and admission see the same cluster.
    """
    workers = spec.workers
    if not workers.elastic or workers.gpu is None:
        return None
    worker = render.worker_pod(key.name, key.namespace, uid, spec, 0, 1, 0)
    limit = workers.max_replicas or workers.replicas
    return ADMISSION.room_for(key, capacity.Demand.of(worker), limit, render.worker_selector(key.name))


def carry_out(plan: assessing.Plan, key: ObjectKey, uid: str, spec: TrainingJobSpec,
              pods: list[dict[str, Any]], lost_nodes: Mapping[str, str]) -> capacity.Held | None:  # fmt: skip
    """Do what ``plan`` asks, in the crash-safe order of the module docstring; why the group waits, if it does.

    Pods on a lost node are deleted with no grace period: no kubelet is left
    to confirm a graceful deletion, and the next group waits for them to go.
    """
    name, namespace = key.name, key.namespace
    if plan.restarted is not None:
        kube.patch_status(TRAINING_JOB, namespace, name, plan.status)
        DELETED.record(uid, lambda: metrics.record_training_restarts(namespace, name, restarts_by_reason(plan.status)))
    stranded = {pod_name(p) for p in pods if (p.get("spec") or {}).get("nodeName") in lost_nodes}
    doomed = list(plan.delete_pods) + [pod_name(p) for p in pods
                                       if terminating(p) and pod_name(p) in stranded]  # fmt: skip
    for pod in dict.fromkeys(doomed):
        kube.delete("v1", "Pod", namespace, pod, grace_period_seconds=0 if pod in stranded else None)
    if plan.delete_job:
        kube.delete(API_VERSION, KIND, namespace, name)
        return None
    if plan.phase in ("Succeeded", "Failed", "Suspended"):
        ADMISSION.forget(key)  # a reservation of a running group stays until a listing shows its pods
    if plan.phase not in ("Pending", "Starting"):
        return None
    if plan.create_workers:
        claim = render.checkpoint_claim(name, namespace, uid, spec)
        if claim is not None:
            kube.apply(claim)
        kube.apply(render.headless_service(name, namespace, uid, spec))
    group = [p for p in pods if pod_group(p) == plan.group and not terminating(p)]
    waiting = [p for p in group if admission.gated(p) and pod_name(p) not in plan.delete_pods]
    existing = {pod_index(p) for p in group}
    rendered = render.worker_group(name, namespace, uid, spec, plan.replicas, plan.group) if plan.create_workers else []
    missing = [worker for worker in rendered if int(worker["metadata"]["labels"][render.INDEX_LABEL]) not in existing]
    if not missing and not waiting:
        return None
    # What a worker asks for as admitted (see kube.as_admitted): a gated one's own spec, or a dry run.
    sample = waiting[0] if waiting else kube.as_admitted(missing[0])
    held = ADMISSION.admit(key, capacity.Demand.of(sample), len(missing) + len(waiting), render.worker_selector(name))
    # The group's pods are written together (requests in parallel), so the gang appears at once.
    if held is not None:
        list(CREATORS.map(kube.create, [render.gated(worker) for worker in missing]))
        return held
    list(CREATORS.map(kube.create, missing))
    list(CREATORS.map(lambda p: kube.remove_scheduling_gates(namespace, pod_name(p)), waiting))
    ADMISSION.written(key)
    return None


def claims_waited_on(namespace: str, name: str, spec: TrainingJobSpec, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claims the workers mount, read only while a worker waits for a node (a claim may hold it)."""
    if not any(not (p.get("spec") or {}).get("nodeName") and not terminating(p) for p in pods):
        return []
    names = {render.checkpoint_claim_name(name, spec), render.output_claim_name(name, spec),
             spec.dataset.name if spec.dataset else None}  # fmt: skip
    found = (kube.get("v1", "PersistentVolumeClaim", namespace, claim) for claim in sorted(n for n in names if n))
    return [claim for claim in found if claim is not None]


def restarts_by_reason(status: Mapping[str, Any]) -> dict[str, int]:
    """``status.restarts.byReason`` of a TrainingJob, empty when nothing restarted."""
    return dict(((status.get("restarts") or {}).get("byReason")) or {})


def forget_job(namespace: str, name: str) -> None:
    """Drop a deleted job's share of every per-job metric and of the admission's ledger."""
    ADMISSION.forget(ObjectKey(KIND, namespace, name))
    metrics.record_training_workers(namespace, name, None)
    metrics.record_training_progress(namespace, name, None)
    metrics.record_training_restarts(namespace, name, None)


def reconcile_job(
    body: Mapping[str, Any],
    status_patch: MutableMapping[str, Any],
    *,
    retry: int,
    logger: Logger,
    warn: Warn,
    post: Poster | None = None,
    now: datetime | None = None,
) -> float | None:
    """One pass over a TrainingJob (fits ``loop.Reconciler``); returns the requeue delay.

    ``body`` is the job as the API server has it now (``loop.read_live``): kopf's copy is
    updated by the watch, which may not have delivered this loop's own last status write yet,
    and decisions (the group generation, restart budgets) must start from the status as
    written, never from an older copy.
    """
    parsed = validation.parse_spec(KIND, validation.to_plain(body.get("spec")))
    if isinstance(parsed, ValidationError) or not isinstance(parsed, TrainingJobSpec):
        reconcile.reconcile(KIND, body, status_patch, retry=retry, logger=logger, warn=warn, now=now)
        return None
    started = time.perf_counter()
    metadata = body.get("metadata") or {}
    name, namespace = str(metadata.get("name", "")), str(metadata.get("namespace", ""))
    uid, generation = str(metadata.get("uid", "")), int(metadata.get("generation") or 0)
    existing = validation.to_plain(body.get("status") or {})
    DELETED.record(uid, lambda: metrics.record_training_restarts(namespace, name, restarts_by_reason(existing)))
    moment = now or datetime.now(UTC)
    DATASET_USERS.note(namespace, name, parsed.dataset.name if parsed.dataset else None)
    key = ObjectKey(KIND, namespace, name)
    try:
        network.POLICIES.sync(key, uid, generation, parsed)
        ready, why = dataset_readiness(namespace, parsed)
        selector = common.label_selector(render.worker_selector(name))
        pods = kube.list_labelled("v1", "Pod", namespace, selector)
        NODES.note_pods(key, pods)
        fits = elastic_capacity(key, uid, parsed)
        grace = float(parsed.restart_policy.node_loss_grace_seconds)
        lost_nodes, recheck = NODES.lost(pods, grace, moment)
        observed = assessing.Observed(pods=pods, now=moment, dataset_ready=ready, dataset_message=why,
                                      output_uri=render.output_uri(name, parsed), lost_nodes=lost_nodes, capacity=fits,
                                      live=PROGRESS.live(key), claims=claims_waited_on(namespace, name, parsed, pods),
                                      service_account_missing=service_account_missing(namespace, parsed, pods))  # fmt: skip
        plan = assessing.assess(parsed, generation, existing, observed)
        held = carry_out(plan, key, uid, parsed, pods, lost_nodes)
        if held is not None:  # the same pass, with the admission's answer (no more writes)
            plan = assessing.assess(parsed, generation, existing, dataclasses.replace(observed, held=held))
        NODES.note_elastic(key, parsed.workers.elastic or held is not None)
        reporter = assessing.progress_pod(plan, pods)
        PROGRESS.watch(key, None if reporter is None else target_of(reporter))
    except Exception as error:
        raise reconcile.failed_pass(KIND, generation, error, existing, status_patch, retry=retry, logger=logger,
                                    moment=moment, started=started, warn=warn) from error  # fmt: skip
    if validation.needs_patch(existing, plan.status):
        status_patch.update(plan.status)
    poster = post or kopf_poster(body)
    for event in plan.events:
        logger.info(f"{event.reason}: {event.message}")
        poster(event.type, event.reason, event.message)
    counts = {**plan.status.get("workers", {}), **({"schedulable": fits} if fits is not None else {})}
    if plan.delete_job:
        forget_job(namespace, name)
    else:
        def record() -> None:
            metrics.record_training_workers(namespace, name, counts)
            metrics.record_training_progress(namespace, name, plan.status.get("progress"))

        DELETED.record(uid, record)
    metrics.record_reconcile(KIND, "accepted", time.perf_counter() - started)
    if fits is not None and plan.phase in ("Running", "Starting", "Pending"):
        # Capacity freed by other pods wakes nobody: look again now and then.
        recheck = ELASTIC_RECHECK_SECONDS if recheck is None else min(recheck, ELASTIC_RECHECK_SECONDS)
    if held is not None:
        recheck = admission.RECHECK_SECONDS if recheck is None else min(recheck, admission.RECHECK_SECONDS)
    if recheck is not None:
        return recheck if plan.requeue is None else min(plan.requeue, recheck)
    return plan.requeue


class DatasetUsers:
    """Which jobs wait on which dataset, learnt from their passes (thread-safe: passes run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[tuple[str, str], set[str]] = {}

    def note(self, namespace: str, job: str, dataset: str | None) -> None:
        with self._lock:
            for users in self._users.values():
                users.discard(job)
            if dataset is not None:
                self._users.setdefault((namespace, dataset), set()).add(job)

    def jobs_of(self, dataset: Mapping[str, Any]) -> list[ObjectKey]:
        metadata = dataset.get("metadata") or {}
        namespace, name = str(metadata.get("namespace", "")), str(metadata.get("name", ""))
        with self._lock:
            return [ObjectKey(KIND, namespace, job) for job in sorted(self._users.get((namespace, name), ()))]


DATASET_USERS = DatasetUsers()


class NodeWatch:
    """Nodes as the node watch saw them: which are gone, which NotReady since when, who uses them.

    Passes note which nodes their workers are on; a node event wakes those jobs,
    and :meth:`lost` tells a pass which of its nodes are lost (deleted, or
    NotReady for longer than the job's grace period). Pods on a deleted node
    are also removed by the pod garbage collector eventually; this makes the
    replacement prompt and honours ``nodeLossGraceSeconds`` for NotReady nodes.
    """

    #: Deleted nodes are remembered this long (their pods are garbage-collected well before).
    FORGET_AFTER = timedelta(hours=1)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._elastic: set[ObjectKey] = set()
        self._capacity: dict[str, tuple[bool, object, object]] = {}
        self._gone: dict[str, datetime] = {}
        self._not_ready_since: dict[str, datetime] = {}
        self._users: dict[str, set[ObjectKey]] = {}

    def note_pods(self, job: ObjectKey, pods: list[dict[str, Any]]) -> None:
        nodes = {str((p.get("spec") or {}).get("nodeName")) for p in pods if (p.get("spec") or {}).get("nodeName")}
        with self._lock:
            for node, users in list(self._users.items()):
                if node not in nodes:
                    users.discard(job)
                    if not users:
                        del self._users[node]
            for node in nodes:
                self._users.setdefault(node, set()).add(job)

    def note_elastic(self, job: ObjectKey, elastic: bool) -> None:
        """Remember the elastic jobs: any change of GPU capacity wakes them."""
        with self._lock:
            if elastic:
                self._elastic.add(job)
            else:
                self._elastic.discard(job)

    def observe(self, node: Mapping[str, Any], deleted: bool, now: datetime) -> list[ObjectKey]:
        """Record a node event; returns the jobs to wake."""
        name = str((node.get("metadata") or {}).get("name", ""))
        ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
        shape = (
            bool(ready and ready.get("status") == "True") and not deleted,
            tuple(sorted(((node.get("status") or {}).get("allocatable") or {}).items())),
            (node.get("spec") or {}).get("unschedulable"),
        )
        with self._lock:
            resized = self._capacity.get(name) != shape
            if resized:  # the admission's listing is out of date: the next decision lists again
                ADMISSION.invalidate()
            if deleted:
                self._capacity.pop(name, None)
            else:
                self._capacity[name] = shape
            # A node that came, went or changed shape: elastic jobs resize, groups waiting for room look again.
            woken = set(self._users.get(name, ())) | ((self._elastic | set(ADMISSION.waiting())) if resized else set())
            for old, when in list(self._gone.items()):
                if now - when > self.FORGET_AFTER:
                    del self._gone[old]
            if deleted:
                self._gone[name] = now
                self._not_ready_since.pop(name, None)
            elif ready is not None and ready.get("status") != "True":
                since = ready.get("lastTransitionTime")
                moment = datetime.fromisoformat(since.replace("Z", "+00:00")) if since else now
                self._not_ready_since.setdefault(name, moment)
            else:
                self._gone.pop(name, None)
                self._not_ready_since.pop(name, None)
            return sorted(woken)

    def lost(self, pods: list[dict[str, Any]], grace: float, now: datetime) -> tuple[dict[str, str], float | None]:
        """Lost nodes of ``pods`` with why, and when to look again for a NotReady one not yet past grace."""
        lost: dict[str, str] = {}
        recheck: float | None = None
        with self._lock:
            for pod in pods:
                node = str((pod.get("spec") or {}).get("nodeName") or "")
                if node in self._gone:
                    lost[node] = "was deleted"
                elif node in self._not_ready_since:
                    waited = (now - self._not_ready_since[node]).total_seconds()
                    if waited >= grace:
                        lost[node] = f"has been NotReady for {waited:.0f} s"
                    else:
                        recheck = min(recheck or grace, grace - waited)
        return lost, recheck


NODES = NodeWatch()


def groups_waiting_for(pod: Mapping[str, Any]) -> list[ObjectKey]:
    """Jobs whose group waits for room, when a worker of any job gives its room back (finished or going)."""
    finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
    waiting = ADMISSION.waiting() if finished or terminating(pod) else []
    if waiting:
        ADMISSION.invalidate()
    return waiting


def stopped(key: ObjectKey) -> None:
    """The job's loop ended (deleted, or this replica paused): stop polling, sync its policy again if it returns."""
    PROGRESS.forget(key)
    network.POLICIES.forget(key)


def register() -> None:
    """Register the loop, its wake-ups and the metric clean-up with kopf."""
    loop.register(TRAINING_JOB, reconcile_job, on_stop=stopped, on_gone=lambda key: forget_job(key.namespace, key.name))
    loop.wake_owner_on(TRAINING_JOB, "", "v1", "pods")
    loop.wake_on("", "v1", "pods", groups_waiting_for, labels={common.owner_label(KIND): kopf.PRESENT},
                 handler_id="wake-trainingjob-gangs")  # fmt: skip
    loop.wake_on(GROUP, VERSION, LEPTON_DATASET.plural, DATASET_USERS.jobs_of, handler_id="wake-trainingjob-dataset")

    @kopf.on.event("", "v1", "nodes", id="training-nodes")
    async def wake_on_node(body: kopf.Body, type: str | None, **_: Any) -> None:
        for key in NODES.observe(body, type == "DELETED", datetime.now(UTC)):
            WAKEUPS.wake(key)

    @kopf.on.event(GROUP, VERSION, TRAINING_JOB.plural, id="training-metrics")
    async def forget_deleted(body: kopf.Body, type: str | None, **_: Any) -> None:
        if type == "DELETED":
            metadata = body.get("metadata", {})
            DELETED.forget(str(metadata.get("uid") or ""),
                           lambda: forget_job(str(metadata.get("namespace")), str(metadata.get("name"))))


register()
