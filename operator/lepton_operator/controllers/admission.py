"""Gang admission: a TrainingJob's group reaches the scheduler only when all of it fits at once.

Without it, two jobs whose groups each fit alone but not together can each get
half their workers bound and wait forever for the other half, holding nodes
the other needs (Kubeflow #1617, the reason Volcano and Kueue exist). Worker
pods that cannot be admitted are created with the ``lepton.ai/gang``
scheduling gate, which keeps the scheduler away from them; when a later pass
finds room for the whole group, the gates of all of it are removed together.
A group admitted at creation is created without gates (no extra writes on an
uncontended cluster).

Decisions are serialized by one lock in this process (one acting operator
replica, kopf peering) and made on a :class:`status.capacity.Cluster` built
from a listing of nodes and unfinished pods that is at most ``max_age``
seconds old, so a burst of jobs costs one listing, not one each, and at most
:data:`LISTING_SHARE` of the time goes to listing: a listing that took ``t``
seconds serves for ``t / LISTING_SHARE`` at least. On a large cluster a
listing is thousands of pods to fetch and parse (about a second here at 4000
pods), and one every ``max_age`` would take a core. A listing
does not show what was admitted after it was taken, so every admission is also
written into a ledger of reservations; a reservation is dropped once a listing
taken after its pods were written is in use (then the pods themselves are in
it, bound or in flight), or after ``hold_for`` seconds at the latest (a pass
that died between deciding and writing). While a reservation stands, the pods
of its job that a listing already shows are not counted again: a listing taken
while the writes were under way shows some of them, and counting both would
make a later group wait for room that is there. Jobs whose group waits are
remembered, so that anything that frees room (a job finishing or suspended, a
node appearing) can wake them; they also look again every few seconds.

A waiting group is admitted whenever it fits (best effort, not strict FIFO): a
large group can wait behind a stream of small ones, which is the trade Kueue's
``BestEffortFIFO`` makes too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lepton_operator.controllers import kube
from lepton_operator.controllers.wakeups import ObjectKey
from lepton_operator.render.training import GANG_GATE
from lepton_operator.status import capacity

#: Jobs whose group waits for room look again this often (room freed by pods of others wakes nobody).
RECHECK_SECONDS = 5.0
#: The share of time the decisions may spend listing (see the module docstring).
LISTING_SHARE = 0.1
#: Pods that take room: not finished (the API server filters; thousands of finished pods are not read).
UNFINISHED = "status.phase!=Succeeded,status.phase!=Failed"
#: Returns the cluster's nodes and unfinished pods, as plain JSON (pods may come lazily, page by page).
Lister = Callable[[], tuple[list[dict[str, Any]], Iterable[dict[str, Any]]]]


def list_cluster() -> tuple[list[dict[str, Any]], Iterable[dict[str, Any]]]:
    """Nodes and unfinished pods, cluster-wide, from the API server."""
    return list(kube.list_plain("v1", "Node")), kube.list_plain("v1", "Pod", UNFINISHED)


@dataclass
class _Reservation:
    demand: capacity.Demand
    count: int
    own: Mapping[str, str]
    """The labels of the job's pods: a listing's pods carrying them are this reservation, not more demand."""
    decided: float
    written: float | None = None


class GangAdmission:
    """The admission decisions of this operator process (thread-safe: passes run in threads)."""

    def __init__(self, lister: Lister = list_cluster, *, max_age: float = 2.0, hold_for: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._lister, self._max_age, self._hold_for, self._clock = lister, max_age, hold_for, clock
        self._lock = threading.Lock()
        self._cluster: capacity.Cluster | None = None
        self._listed_at = float("-inf")
        self._serves_for = max_age
        self._ledger: dict[ObjectKey, _Reservation] = {}
        self._waiting: set[ObjectKey] = set()

    def _current(self) -> capacity.Cluster:
        """The cluster as listed at most ``max_age`` ago, with the ledger trimmed to match (lock held)."""
        now = self._clock()
        if self._cluster is None or now - self._listed_at > self._serves_for:
            nodes, pods = self._lister()
            self._cluster, self._listed_at = capacity.Cluster(nodes, pods), now  # pods are read as it is built
            self._serves_for = max(self._max_age, (self._clock() - now) / LISTING_SHARE)
        for key, held in list(self._ledger.items()):
            seen = held.written is not None and held.written < self._listed_at
            if seen or now - held.decided > self._hold_for:
                del self._ledger[key]
        return self._cluster

    def invalidate(self) -> None:
        """Something changed that the listing cannot show (a node came or went, a worker finished): list again."""
        with self._lock:
            self._listed_at = float("-inf")

    def _others(self, job: ObjectKey | None) -> list[tuple[capacity.Demand, int]]:
        """Groups other than ``job`` admitted after the current listing was taken (lock held)."""
        return [(r.demand, r.count) for key, r in self._ledger.items() if key != job]

    def _not_counted(self, cluster: capacity.Cluster, job: ObjectKey, own: Mapping[str, str]) -> set[str]:
        """The listed pods that take no room from ``job``: its own, and those its others' reservations stand for (lock held)."""
        ignored = cluster.pods_labelled(job.namespace, own)
        for key, reservation in self._ledger.items():
            if key != job:
                ignored |= cluster.pods_labelled(key.namespace, reservation.own)
        return ignored

    def reserved(self, excluding: ObjectKey | None = None) -> list[tuple[capacity.Demand, int]]:
        """What other groups were admitted after the current listing was taken."""
        with self._lock:
            return self._others(excluding)

    def room_for(self, job: ObjectKey, demand: capacity.Demand, limit: int, own: Mapping[str, str]) -> int:
        """How many workers of ``demand`` (at most ``limit``) ``job`` could have now (elastic sizing); reserves nothing."""
        with self._lock:
            cluster = self._current()
            return cluster.room_for(demand, limit, self._others(job), self._not_counted(cluster, job, own))

    def admit(self, job: ObjectKey, demand: capacity.Demand, count: int, own: Mapping[str, str]) -> capacity.Held | None:
        """Admit ``count`` workers of ``demand`` for ``job`` if they all fit (``None``, and they are reserved), else why not.

        ``own`` are the labels of the job's pods: what they hold is the job's
        own (its old group's room is the new group's), not room taken.
        """
        with self._lock:
            cluster = self._current()
            held = cluster.held(demand, count, self._others(job), self._not_counted(cluster, job, own))
            if held is not None:
                self._waiting.add(job)
                self._ledger.pop(job, None)
                return held
            self._waiting.discard(job)
            self._ledger[job] = _Reservation(demand, count, dict(own), self._clock())
            return None

    def written(self, job: ObjectKey) -> None:
        """The admitted group's pods are written (created, or their gates removed)."""
        with self._lock:
            if job in self._ledger:
                self._ledger[job].written = self._clock()

    def forget(self, job: ObjectKey) -> None:
        """The job needs no room any more (finished, suspended, deleted)."""
        with self._lock:
            self._ledger.pop(job, None)
            self._waiting.discard(job)

    def waiting(self) -> list[ObjectKey]:
        """Jobs whose group waits for room, to wake when room may have appeared."""
        with self._lock:
            return sorted(self._waiting)


def gated(pod: Mapping[str, Any]) -> bool:
    """Whether a pod still carries the gang gate."""
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(gate.get("name") == GANG_GATE for gate in gates)


ADMISSION = GangAdmission()
