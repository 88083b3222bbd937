"""Room on the cluster's nodes for a group of workers, as the scheduler would count it, as pure functions.

Two decisions need it. Gang admission: a TrainingJob's group starts only when
*all* its workers fit at once (otherwise two half-scheduled jobs can hold each
other's nodes forever); and elastic sizing: an elastic job takes as many
workers as fit. Both ask one question, :meth:`Cluster.room_for`.

A :class:`Cluster` is built once from a listing of nodes and unfinished pods.
A node's free resources are its ``allocatable`` (cpu, memory, pods, GPUs)
minus the *requests* of the pods bound to it (a container's limit stands for
a missing request, as the API server defaults it). Pods not bound yet but free
to be scheduled (no scheduling gate, not terminating) are demand in flight:
they are placed first, where they fit (one that fits nowhere waits for
something this model does not know, and takes nothing). Reservations, groups
admitted since the listing was taken, are placed next, then the asked-for
workers. Placement is best-fit (the fullest node that still takes a worker),
which packs a group tighter than the scheduler's default spreading; the answer
is an estimate made between scheduler decisions, and the job reacts to what the
scheduler really does (its pods' PodScheduled condition).

A node qualifies for a worker when it is Ready and schedulable, its labels
match the worker's node selector and the worker tolerates its
NoSchedule/NoExecute taints.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from lepton_operator.api.quantity import parse_quantity

GPU_RESOURCE = "nvidia.com/gpu"
#: What placement counts: cpu in millicores, memory in bytes, pods and GPUs as counts.
RESOURCES = ("cpu", "memory", "pods", GPU_RESOURCE)
Resources = tuple[int, ...]
_CPU, _MEMORY, _PODS, _GPU = (RESOURCES.index(r) for r in RESOURCES)


def _amount(resource: str, value: Any) -> int:
    try:
        quantity = parse_quantity(value)
    except (ValueError, TypeError):
        return 0
    return int(math.ceil(quantity * 1000)) if resource == "cpu" else int(math.ceil(quantity))


def _vector(values: Mapping[str, Any]) -> Resources:
    return tuple(_amount(r, values[r]) if r in values else 0 for r in RESOURCES)


def pod_requests(pod: Mapping[str, Any]) -> Resources:
    """What a pod takes from its node: ``max(sum of containers, largest init container) + overhead``, and 1 pod."""

    def requested(container: Mapping[str, Any]) -> Resources:
        resources = container.get("resources") or {}
        return _vector({**(resources.get("limits") or {}), **(resources.get("requests") or {})})

    spec = pod.get("spec") or {}
    running = [sum(column) for column in zip(*(requested(c) for c in spec.get("containers") or []), strict=True)]
    running = running or [0] * len(RESOURCES)
    for init in spec.get("initContainers") or []:
        running = [max(a, b) for a, b in zip(running, requested(init), strict=True)]
    overhead = _vector(spec.get("overhead") or {})
    total = [a + b for a, b in zip(running, overhead, strict=True)]
    total[_PODS] = 1
    return tuple(total)


def describe(requests: Resources) -> str:
    """``cpu 500m, memory 1Gi, nvidia.com/gpu 1`` (what a message shows of one worker)."""
    shown = []
    for resource, amount in zip(RESOURCES, requests, strict=True):
        if resource == "pods" or not amount:
            continue
        if resource == "cpu":
            shown.append(f"cpu {amount}m" if amount % 1000 else f"cpu {amount // 1000}")
        elif resource == "memory" and amount % (1 << 20) == 0:
            shown.append(f"memory {amount >> 20}Mi")
        else:
            shown.append(f"{resource} {amount}")
    return ", ".join(shown) or "nothing"


@dataclass(frozen=True)
class Demand:
    """What one worker needs and where it may go."""

    requests: Resources
    selector: tuple[tuple[str, str], ...] = ()
    tolerations: str = "[]"
    """The pod's tolerations as canonical JSON (hashable, so equal demands group)."""

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> Demand:
        """The demand of a pod (or of a pod manifest not created yet)."""
        spec = pod.get("spec") or {}
        selector = tuple(sorted((str(k), str(v)) for k, v in (spec.get("nodeSelector") or {}).items()))
        return cls(pod_requests(pod), selector, json.dumps(spec.get("tolerations") or [], sort_keys=True))


class Held(NamedTuple):
    """Why a group may not go to the scheduler yet: a status reason and message."""

    reason: str
    message: str


#: The group would fit on the cluster's eligible nodes if others gave room back.
WAITING_FOR_CAPACITY = "WaitingForCapacity"
#: The group does not fit even on empty nodes: no waiting helps, the spec or the cluster must change.
UNSCHEDULABLE = "Unschedulable"


def _ready(node: Mapping[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _tolerated(taint: Mapping[str, Any], tolerations: Sequence[Mapping[str, Any]]) -> bool:
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for toleration in tolerations:
        if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration.get("key") == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and (toleration.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def eligible(node: Mapping[str, Any], selector: Mapping[str, str], tolerations: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a worker with ``selector`` and ``tolerations`` may be placed on ``node``."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    if (node.get("spec") or {}).get("unschedulable") or not _ready(node):
        return False
    if any(labels.get(key) != value for key, value in selector.items()):
        return False
    return all(_tolerated(taint, tolerations) for taint in (node.get("spec") or {}).get("taints") or [])


def _key(pod: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"


def in_flight(pod: Mapping[str, Any]) -> bool:
    """Not bound yet but free to be scheduled: no node, no scheduling gate, not terminating, not finished."""
    spec, metadata = pod.get("spec") or {}, pod.get("metadata") or {}
    finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
    return not spec.get("nodeName") and not spec.get("schedulingGates") and not metadata.get("deletionTimestamp") and not finished


class Cluster:
    """Free resources per node and the demand in flight, from one listing (see the module docstring)."""

    def __init__(self, nodes: Sequence[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> None:
        self.nodes = {str((n.get("metadata") or {}).get("name", "")): n for n in nodes}
        self._allocatable = {name: _vector((n.get("status") or {}).get("allocatable") or {}) for name, n in self.nodes.items()}
        self._bound: dict[str, tuple[str, Resources]] = {}
        self._pending: dict[str, Demand] = {}
        # namespace -> (label, value) -> pods carrying it: a job's pods are found without a scan of all pods.
        self._labelled: dict[str, dict[tuple[str, str], set[str]]] = {}
        for pod in pods:
            metadata = pod.get("metadata") or {}
            by_label = self._labelled.setdefault(str(metadata.get("namespace")), {})
            for label in (metadata.get("labels") or {}).items():
                by_label.setdefault(label, set()).add(_key(pod))
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            node = (pod.get("spec") or {}).get("nodeName")
            if node:
                self._bound[_key(pod)] = (str(node), pod_requests(pod))
            elif in_flight(pod):
                self._pending[_key(pod)] = Demand.of(pod)
        self._eligible: dict[tuple[tuple[tuple[str, str], ...], str], list[str]] = {}

    def pods_labelled(self, namespace: str, selector: Mapping[str, str]) -> set[str]:
        """``namespace/name`` of the listed pods in ``namespace`` carrying every label of ``selector``.

        How a job names its own pods in this listing: by label, not by its own
        (newer) list, in which a pod deleted since this listing was taken is missing.
        """
        if not selector:  # an empty selector would select every pod: it names none
            return set()
        by_label = self._labelled.get(namespace, {})
        first, *rest = (by_label.get(label, set()) for label in selector.items())
        return first.intersection(*rest)

    def _nodes_for(self, demand: Demand) -> list[str]:
        key = (demand.selector, demand.tolerations)
        if key not in self._eligible:
            selector, tolerations = dict(demand.selector), json.loads(demand.tolerations)
            self._eligible[key] = [name for name, node in self.nodes.items() if eligible(node, selector, tolerations)]
        return self._eligible[key]

    def free(self, ignore: Collection[str] = ()) -> dict[str, list[int]]:
        """Free resources per node; pods named in ``ignore`` (``namespace/name``) count as gone."""
        free = {name: list(amounts) for name, amounts in self._allocatable.items()}
        for key, (node, requests) in self._bound.items():
            if key in ignore or node not in free:
                continue
            free[node] = [a - b for a, b in zip(free[node], requests, strict=True)]
        return free

    def _place(self, free: dict[str, list[int]], demand: Demand, count: int) -> int:
        """Place up to ``count`` workers of ``demand`` best-fit, taking their room from ``free``; how many were placed."""

        def takes(node: str) -> int:
            return min((f // r for f, r in zip(free[node], demand.requests, strict=True) if r > 0), default=count)

        placed = 0
        candidates = [n for n in self._nodes_for(demand) if n in free]
        # Fullest first: GPUs, then cpu, then memory left (a node that takes none is skipped).
        for node in sorted(candidates, key=lambda n: (free[n][_GPU], free[n][_CPU], free[n][_MEMORY], n)):
            if placed == count:
                break
            fits = min(takes(node), count - placed)
            if fits <= 0:
                continue
            free[node] = [f - fits * r for f, r in zip(free[node], demand.requests, strict=True)]
            placed += fits
        return placed

    def room_for(self, demand: Demand, limit: int, reserved: Iterable[tuple[Demand, int]] = (),
                 ignore: Collection[str] = ()) -> int:  # fmt: skip
        """How many workers of ``demand`` (at most ``limit``) fit after the demand in flight and ``reserved``.

        Pods in ``ignore`` (a job's own) count as gone, bound or in flight.
        """
        free = self.free(ignore)
        pending = Counter(d for key, d in self._pending.items() if key not in ignore)
        for other, count in [*pending.items(), *reserved]:
            self._place(free, other, count)
        return self._place(free, demand, limit)

    def held(self, demand: Demand, count: int, reserved: Iterable[tuple[Demand, int]] = (),
             ignore: Collection[str] = ()) -> Held | None:  # fmt: skip
        """``None`` when all ``count`` workers fit now, else why not (waiting helps, or it never fits as the cluster is)."""
        fits = self.room_for(demand, count, reserved, ignore)
        if fits >= count:
            return None
        group = f"{count} workers of {describe(demand.requests)} each"
        empty = {name: list(amounts) for name, amounts in self._allocatable.items()}
        at_most = self._place(empty, demand, count)
        if at_most >= count:
            return Held(WAITING_FOR_CAPACITY, f"waiting for room for the whole group: {group}, {fits} fit now")
        eligible_nodes = self._nodes_for(demand)
        if not eligible_nodes:
            why = "no Ready, schedulable node matches the workers' node selector and tolerations"
        else:
            short = [r for i, r in enumerate(RESOURCES)
                     if all(self._allocatable[n][i] < demand.requests[i] for n in eligible_nodes)]  # fmt: skip
            why = ", ".join(f"Insufficient {r}" for r in short) or "the nodes are too small together"
        return Held(UNSCHEDULABLE, f"the group cannot fit even on empty nodes: {group}, at most {at_most} "
                                   f"of {len(eligible_nodes)} eligible nodes' room ({why})")  # fmt: skip
