"""Chaos: the cluster itself fails under the operator (issue #19, scenarios 2 and 3a).

* kube-apiserver and etcd are killed (SIGKILL) and started again with the same
  arguments (``localcluster.components``) while TrainingJobs, LeptonDatasets and
  InferenceServices are being created and deleted. What the operator meets (seen in
  its log): connections refused and reset mid-request, 429 "storage is (re)initializing",
  403 for a moment after a restart (before the new API server has loaded RBAC), and watches
  that resume with 410 Gone and re-list. Its requests and passes fail and are retried; it
  must reconnect and converge.
* A kwok GPU node is deleted under a running job, non-elastic and elastic.

Every wait is on a condition with a deadline; the measured times are printed
(``pytest -s``) and recorded in the README's Reliability section.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import localcluster
from localcluster import components, local, netns, nodes, realnode
from localcluster.handle import MODE_LOCAL
from localcluster.kube import Kubectl, condition, wait_until
from localcluster.sharing import pid_alive
from operator_fixtures import RunningOperator
from test_dataset import SOURCE, dataset
from test_inference import SPEC, service
from test_training import env_of, job, status_of, wait_phase, workers

pytestmark = pytest.mark.e2e

TIMEOUT = 120.0
#: How long a stream's write may keep failing (the API is down) before the test gives up.
WRITE_TIMEOUT = 120.0
#: Kinds whose objects the operator makes, looked at for duplicates and orphans.
CHILD_KINDS = "pods,deployments,replicasets,services,jobs,persistentvolumeclaims,configmaps,networkpolicies"
OWNER_LABELS = {"TrainingJob": "lepton.ai/trainingjob", "LeptonDataset": "lepton.ai/leptondataset",
                "InferenceService": "lepton.ai/inferenceservice"}  # fmt: skip
SHORT = {"TrainingJob": "tj", "LeptonDataset": "lds", "InferenceService": "lis"}


# ---------------------------------------------------------------------------------------------
# the objects of the stream


def training_job(name: str, product: str) -> dict[str, Any]:
    return job(name, workers={"replicas": 2, "gpu": {"count": 1, "product": product}},
               restartPolicy={"backoff": {"initialSeconds": 0}})  # fmt: skip


def secretless_dataset(name: str, namespace: str) -> dict[str, Any]:
    """A dataset whose secret never comes: it stays Pending (SecretNotFound) with its claim and no Job.

    The claim's class exists nowhere, so no provisioner ever acts on it (LOCAL-CLUSTER.md: claims
    on kwok nodes jam the volume provisioner), while the dataset's reconcile still runs.
    """
    secret = {"name": f"{name}-absent", "keys": {"token": "bearer"}}
    return dataset(name, f"absent-{namespace}", {}, source={"uri": SOURCE, "secretRef": secret})


def inference_service(name: str) -> dict[str, Any]:
    """test_inference's service at one replica and without a GPU (kwok CPU nodes host it)."""
    return service(name, {**{k: v for k, v in SPEC.items() if k != "gpu"}, "replicas": 1})


@dataclass
class Ledger:
    """What the stream asked for: objects that must exist (by kind) and objects it deleted."""

    present: dict[str, set[str]] = field(default_factory=lambda: {kind: set() for kind in SHORT})
    deleted: dict[str, set[str]] = field(default_factory=lambda: {kind: set() for kind in SHORT})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def created(self, kind: str, name: str) -> None:
        with self.lock:
            self.present[kind].add(name)

    def removed(self, kind: str, name: str) -> None:
        with self.lock:
            self.present[kind].discard(name)
            self.deleted[kind].add(name)


def retried(write: Callable[[], object], what: str) -> None:
    """A write that fails while the API is down is tried again until it succeeds (it is idempotent)."""

    def attempt() -> bool:
        write()
        return True

    wait_until(attempt, WRITE_TIMEOUT, what, interval=0.5)


class Stream:
    """Creates a job, a dataset and a service per step; every even step deletes the previous step's three.

    :meth:`run` writes a number of steps in a thread; each write is retried through an outage
    (server-side apply and ``delete --ignore-not-found`` are idempotent, so a write that landed
    before its reply was lost is harmless to repeat).
    """

    def __init__(self, kubectl: Kubectl, namespace: str, product: str) -> None:
        self.kubectl, self.namespace, self.product = kubectl, namespace, product
        self.ledger = Ledger()
        self.steps = 0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def objects(self, step: int) -> list[tuple[str, str, dict[str, Any]]]:
        names = {kind: f"{short}-{step}" for kind, short in SHORT.items()}
        return [("TrainingJob", names["TrainingJob"], training_job(names["TrainingJob"], self.product)),
                ("LeptonDataset", names["LeptonDataset"], secretless_dataset(names["LeptonDataset"], self.namespace)),
                ("InferenceService", names["InferenceService"], inference_service(names["InferenceService"]))]  # fmt: skip

    def step(self, step: int) -> None:
        for kind, name, body in self.objects(step):
            retried(lambda b=body: self.kubectl.apply(b, "--server-side"), f"create {kind} {name}")  # type: ignore[misc]
            self.ledger.created(kind, name)
        if step % 2 == 0 and step > 0:  # odd steps are deleted by the next one: half the objects come and go
            for kind, name, _ in self.objects(step - 1):
                retried(lambda k=kind, n=name: self.kubectl.delete(SHORT[k], n), f"delete {kind} {name}")  # type: ignore[misc]
                self.ledger.removed(kind, name)

    def run(self, count: int) -> None:
        """Write ``count`` more steps in a thread (:meth:`join` waits for them)."""

        def steps() -> None:
            try:
                for _ in range(count):
                    self.step(self.steps)
                    self.steps += 1
            except BaseException as error:  # noqa: BLE001 - raised again by the main thread
                self.error = error

        self._thread = threading.Thread(target=steps, daemon=True)
        self._thread.start()

    def wait_steps(self, count: int, what: str) -> None:
        def done() -> bool:
            if self.error is not None:
                raise self.error
            return self.steps >= count

        wait_until(done, TIMEOUT, what)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(WRITE_TIMEOUT * 6)
        if self.error is not None:
            raise self.error


# ---------------------------------------------------------------------------------------------
# the invariants


def owner_of(child: dict[str, Any]) -> tuple[str, str] | None:
    labels = child["metadata"].get("labels") or {}
    for kind, label in OWNER_LABELS.items():
        if label in labels:
            return kind, labels[label]
    return None


def problems(kubectl: Kubectl, ledger: Ledger) -> list[str]:
    """Everything that is not yet as the ledger asks; [] once converged.

    * each object that must exist exists and is in the state its spec asks: a job Running
      with exactly its 2 workers (indices 0 and 1, of the group its status names, none
      terminating) and its Service; a dataset Pending on SecretNotFound, with its one claim
      and no prepare Job; a service Ready with its Deployment at 1 replica;
    * each object the stream deleted is gone, and so is every child of it;
    * no child names an owner that does not exist (no orphan) and no owner has two children of
      one kind where it should have one (no duplicate).
    """
    with ledger.lock:
        present = {kind: set(names) for kind, names in ledger.present.items()}
    found: list[str] = []
    owners = {kind: {o["metadata"]["name"]: o for o in kubectl.get(SHORT[kind])} for kind in SHORT}
    for kind in SHORT:
        if set(owners[kind]) - present[kind]:
            found.append(f"{kind} not deleted: {sorted(set(owners[kind]) - present[kind])}")
        if present[kind] - set(owners[kind]):
            found.append(f"{kind} missing: {sorted(present[kind] - set(owners[kind]))}")
    children: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for child in kubectl.get(CHILD_KINDS):
        owner = owner_of(child)
        if owner is None:
            continue
        if owner[1] not in owners[owner[0]]:
            found.append(f"orphan {child['kind']} {child['metadata']['name']} of deleted {owner[0]} {owner[1]}")
        children.setdefault(owner, []).append(child)

    def of(kind: str, name: str, child_kind: str) -> list[dict[str, Any]]:
        return [c for c in children.get((kind, name), []) if c["kind"] == child_kind]

    for name, job in owners["TrainingJob"].items():
        status = job.get("status") or {}
        pods = of("TrainingJob", name, "Pod")
        indices = sorted(int(p["metadata"]["labels"]["lepton.ai/worker-index"]) for p in pods)
        groups = {int(p["metadata"]["labels"]["lepton.ai/group"]) for p in pods}
        if status.get("phase") != "Running" or (status.get("workers") or {}).get("ready") != 2:
            found.append(f"TrainingJob {name}: {status.get('phase')} {status.get('reason')} {status.get('workers')}")
        if indices != [0, 1] or groups != {status.get("group")} or any(p["metadata"].get("deletionTimestamp") for p in pods):
            found.append(f"TrainingJob {name}: workers {indices} of groups {groups}, status group {status.get('group')}")
        if [s["metadata"]["name"] for s in of("TrainingJob", name, "Service")] != [name]:
            found.append(f"TrainingJob {name}: services {[s['metadata']['name'] for s in of('TrainingJob', name, 'Service')]}")
    for name, obj in owners["LeptonDataset"].items():
        validated = condition(obj, "Validated") or {}
        if (obj.get("status") or {}).get("phase") != "Pending" or validated.get("reason") != "SecretNotFound":
            found.append(f"LeptonDataset {name}: {(obj.get('status') or {}).get('phase')} {validated.get('reason')}")
        made = sorted(c["kind"] for c in children.get(("LeptonDataset", name), []) if c["kind"] in ("Job", "PersistentVolumeClaim"))
        if made != ["PersistentVolumeClaim"]:
            found.append(f"LeptonDataset {name}: {made} (its claim, and no prepare Job without the secret)")
    for name, obj in owners["InferenceService"].items():
        phase = (obj.get("status") or {}).get("phase")
        deployments = of("InferenceService", name, "Deployment")
        if phase != "Ready" or [d["spec"]["replicas"] for d in deployments] != [1]:
            found.append(f"InferenceService {name}: {phase}, deployments {[d['spec']['replicas'] for d in deployments]}")
        if len(of("InferenceService", name, "Pod")) > 1:
            found.append(f"InferenceService {name}: {len(of('InferenceService', name, 'Pod'))} pods for 1 replica")
    return found


#: What counts as a handled exception: a traceback whose log record says the operator retries
#: the work itself: kopf's API client ("Request attempt #2/5 failed; will retry") and the
#: reconcile loop ("pass failed, retrying in 10 s", "could not record the ReconcileError
#: condition", after which the pass is retried). Every other traceback is unhandled: an
#: exception that escaped the operator's code into kopf ("Daemon 'loop' failed with an
#: exception and will try again in 30.0 seconds", "Handler ... failed", kopf restarting a
#: crashed daemon is not the operator handling it), asyncio's "Task exception was never
#: retrieved", a crashed watcher. The invariant allows no unhandled one.
RETRIED = re.compile(r"failed; will retry|retrying in \d+ s|could not record the ReconcileError condition")
RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d ")


def unhandled_tracebacks(log: str) -> list[str]:
    """Each traceback whose log record (the last record line above it) is not a logged retry."""
    lines = log.splitlines()
    bad = []
    record = ""
    for index, line in enumerate(lines):
        if RECORD.match(line):
            record = line
        elif line.startswith("Traceback (most recent call last)") and not RETRIED.search(record):
            bad.append(f"{record[:400]}\n" + "\n".join(lines[index:index + 30]))
    return bad


# ---------------------------------------------------------------------------------------------
# scenario 2: kube-apiserver and etcd restarted


@pytest.fixture
def gpu_product(kubectl: Kubectl) -> Iterator[str]:
    """Two 8-GPU kwok nodes of a product only this test's jobs ask for (removed afterwards)."""
    product = f"TEST-GPU-{uuid.uuid4().hex[:6]}"
    added = [nodes.add_gpu_node(kubectl, product=product) for _ in range(2)]
    try:
        yield product
    finally:
        for name in added:
            retried(lambda n=name: nodes.delete_node(kubectl, n, wait=False), f"delete node {name}")  # type: ignore[misc]


STEPS_PER_ROUND = 4
STEPS_BEFORE_KILL = 2
ROUNDS = ((components.APISERVER,), (components.ETCD,), (components.ETCD, components.APISERVER))


def test_chaos_apiserver_and_etcd_restarted_during_reconciles_converge(
    cluster: localcluster.Cluster, lepton_operator: RunningOperator, kubectl: Kubectl, namespace: str, gpu_product: str
) -> None:
    """kube-apiserver, then etcd, then both are SIGKILLed and started again during a stream of writes.

    Invariant, after each round: every object converges to the state its spec asks (jobs
    Running with exactly their workers, datasets Pending on their missing secret with their
    claim and no prepare Job, services Ready at their replica count), objects deleted meanwhile leave no child, no child
    is an orphan or a duplicate, the operator process stays up (no crash, no restart), and its
    log holds no traceback other than logged-and-retried ones. The time from the API answering
    again to convergence is printed; the control plane is whole again afterwards.
    """
    assert cluster.mode == MODE_LOCAL, "this scenario restarts the local cluster's own processes"
    writer = kubectl.in_namespace(namespace)
    writer.timeout = 15.0
    stream = Stream(writer, namespace, gpu_product)
    operator_pid = lepton_operator.process.pid
    for round_number, victims in enumerate(ROUNDS):
        first = stream.steps
        stream.run(STEPS_PER_ROUND)
        stream.wait_steps(first + STEPS_BEFORE_KILL, f"round {round_number}: the stream under way")
        restart = components.restart(victims)  # while the next step is being written
        back = time.monotonic()
        stream.join()

        def converged() -> bool:
            assert pid_alive(operator_pid), f"the operator exited:\n{lepton_operator.process.log_tail(60)}"
            found = problems(kubectl, stream.ledger)
            if found:
                raise LookupError("; ".join(found[:6]))
            return True

        wait_until(converged, TIMEOUT, f"convergence after restarting {' and '.join(victims)}", interval=0.5)
        took = time.monotonic() - back
        print(f"\n[chaos] restarted {' + '.join(victims)}: API unusable {restart.outage_seconds:.1f} s, "
              f"converged {took:.1f} s after it answered again "
              f"({sum(map(len, stream.ledger.present.values()))} objects live, "
              f"{sum(map(len, stream.ledger.deleted.values()))} deleted so far"
              f"{', revived ' + ', '.join(restart.revived) if restart.revived else ''})")
    assert sum(map(len, stream.ledger.deleted.values())) >= 3 * len(ROUNDS)  # the stream did delete, every round
    log = Path(lepton_operator.log_path).read_text(errors="replace")
    assert "failed; will retry" in log  # the operator did see the outages (its requests failed, were retried)
    print(f"[chaos] {log.count(' is gone: its loop ends')} loops found their object gone at a pass "
          "(its DELETED event lost in a watch gap)")  # fmt: skip
    bad = unhandled_tracebacks(log)
    assert not bad, f"{len(bad)} unhandled tracebacks in the operator log; first:\n{bad[0]}"
    assert local.components_alive(), f"a control-plane process is down after the test: {local.dead_components()}"
    assert realnode.running(netns.instance()), f"the real node lost {realnode.dead_processes(netns.instance())}"


# ---------------------------------------------------------------------------------------------
# scenario 3a: a kwok GPU node deleted under a running job


@pytest.fixture
def own_gpu_nodes(kubectl: Kubectl) -> Iterator[tuple[str, list[str]]]:
    """Three 8-GPU kwok nodes of a product only this test's job asks for: (product, node names).

    The test deletes some of them; whatever is left goes afterwards. The cluster's own pool is
    never touched, so nothing needs restoring for later tests (checked: it is all Ready).
    """
    product = f"TEST-GPU-{uuid.uuid4().hex[:6]}"
    added = [nodes.add_gpu_node(kubectl, product=product) for _ in range(3)]
    try:
        yield product, added
    finally:
        for name in added:
            nodes.delete_node(kubectl, name, wait=False)
        pool = [n for n in nodes.kwok_nodes(kubectl) if n["metadata"]["name"].startswith("kwok-gpu-")
                and not n["metadata"]["name"].startswith("kwok-gpu-x-")]  # fmt: skip
        nodes.wait_nodes_ready(kubectl, [n["metadata"]["name"] for n in pool], TIMEOUT)


def running_group(kubectl: Kubectl, name: str, size: int, after: int = -1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Status and workers of ``name`` once a group newer than ``after`` runs with exactly ``size`` workers."""

    def running() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        status = status_of(kubectl, name)
        if status.get("phase") != "Running" or status.get("group", -1) <= after:
            return None
        if (status.get("workers") or {}).get("ready") != size:
            return None
        pods = [p for p in workers(kubectl, name) if not p["metadata"].get("deletionTimestamp")]
        return (status, pods) if len(pods) == size and {int(p["metadata"]["labels"]["lepton.ai/group"]) for p in pods} == {status["group"]} else None

    found = wait_until(running, TIMEOUT, f"{name}: a group after {after} running {size} workers")
    assert found is not None
    return found


def test_chaos_node_lost_under_a_non_elastic_job_restarts_it_within_its_node_lost_budget(
    lepton_operator: RunningOperator, kubectl: Kubectl, own_gpu_nodes: tuple[str, list[str]]
) -> None:
    """A node of a running 2-worker job is deleted; later a second one, with the budget spent.

    Invariant: the first loss restarts the whole group on the nodes left (never on the lost
    one), counted once under NodeLost in ``status.restarts``; the old group is gone; with
    ``backoffLimit: 1`` the second loss fails the job (BackoffLimitExceeded), never a second
    NodeLost restart. The time from the deletion to the job Running again is printed.
    """
    product, added = own_gpu_nodes
    spec = {"workers": {"replicas": 2, "gpu": {"count": 8, "product": product}},
            "restartPolicy": {"backoffLimit": 1, "backoff": {"initialSeconds": 0}}}  # fmt: skip
    kubectl.apply(job("steady", **spec), "--server-side")
    _, pods = running_group(kubectl, "steady", 2)
    doomed = pods[1]["spec"]["nodeName"]
    deleted = time.monotonic()
    nodes.delete_node(kubectl, doomed)
    status, pods = running_group(kubectl, "steady", 2, after=0)
    print(f"\n[chaos] node {doomed} deleted under a 2-worker job: Running again on the other nodes "
          f"{time.monotonic() - deleted:.1f} s later (group {status['group']})")
    assert (status["restarts"]["total"], status["restarts"]["byReason"]) == (1, {"NodeLost": 1}), status["restarts"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(n for n in added if n != doomed)
    assert workers(kubectl, "steady", group=0) == []

    nodes.delete_node(kubectl, pods[0]["spec"]["nodeName"])  # the NodeLost budget (1) is spent
    status = wait_phase(kubectl, "steady", "Failed", TIMEOUT)
    assert status["reason"] == "BackoffLimitExceeded"
    assert (status["restarts"]["total"], status["restarts"]["byReason"]) == (1, {"NodeLost": 1}), status["restarts"]


def test_chaos_node_lost_under_an_elastic_job_resizes_it_without_spending_its_budget(
    lepton_operator: RunningOperator, kubectl: Kubectl, own_gpu_nodes: tuple[str, list[str]]
) -> None:
    """A node of a running elastic job (1 to 3 workers, one per node) is deleted.

    Invariant: the job restarts at the size the nodes left can host (2), counted as Resized,
    not as a failure: with ``backoffLimit: 0`` a node loss counted as NodeLost would fail it.
    The new group runs only on the nodes left. The time from the deletion to the job Running
    again is printed.
    """
    product, added = own_gpu_nodes
    spec = {"workers": {"replicas": 3, "minReplicas": 1, "maxReplicas": 3, "gpu": {"count": 8, "product": product}},
            "restartPolicy": {"backoffLimit": 0, "backoff": {"initialSeconds": 0}}}  # fmt: skip
    kubectl.apply(job("stretchy", **spec), "--server-side")
    before, pods = running_group(kubectl, "stretchy", 3)
    resized_before = (before.get("restarts") or {}).get("byReason", {}).get("Resized", 0)
    doomed = pods[0]["spec"]["nodeName"]
    deleted = time.monotonic()
    nodes.delete_node(kubectl, doomed)
    status, pods = running_group(kubectl, "stretchy", 2, after=before["group"])
    print(f"\n[chaos] node {doomed} deleted under a 3-worker elastic job: Running again with 2 workers "
          f"{time.monotonic() - deleted:.1f} s later (group {status['group']})")
    assert status["restarts"]["byReason"] == {"Resized": resized_before + 1}, status["restarts"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(n for n in added if n != doomed)
    assert {env_of(p)["PET_NNODES"] for p in pods} == {"1:3"} and {env_of(p)["WORLD_SIZE"] for p in pods} == {"16"}
