"""Gang admission: whole groups or nothing, one listing for a burst, reservations until a listing shows them."""

from __future__ import annotations

from typing import Any

from lepton_operator.controllers.admission import GangAdmission, gated
from fake_kube import cpu_node
from lepton_operator.controllers.wakeups import ObjectKey
from lepton_operator.status import capacity

WORKER = capacity.Demand.of({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}})
A, B, C = (ObjectKey("TrainingJob", "ml", name) for name in "abc")


def bound(name: str, node: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": {"nodeName": node, "containers": [{"resources": {"requests": {"cpu": "1"}}}]},
            "status": {"phase": "Running"}}  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Listing:
    """The cluster as the API server would list it; counts the listings."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes, self.pods, self.calls = nodes, list[dict[str, Any]](), 0

    def __call__(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        self.calls += 1
        return self.nodes, list(self.pods)


def test_two_groups_that_fit_alone_but_not_together_are_admitted_one_at_a_time() -> None:
    """The deadlock gang admission exists for: 2 + 2 workers on a 3-cpu node."""
    listing, clock = Listing([cpu_node("n", 3)]), Clock()
    admission = GangAdmission(listing, clock=clock)
    assert admission.admit(A, WORKER, 2, own={}) is None
    admission.written(A)
    assert admission.admit(B, WORKER, 2, own={}) == ("WaitingForCapacity", "waiting for room for the whole group: 2 workers of cpu 1 each, 1 fit now")
    assert admission.waiting() == [B]
    assert listing.calls == 1  # one listing serves the burst
    # A's pods are bound by now and a later listing shows them: the reservation goes, the pods count instead.
    listing.pods = [bound("a-0", "n"), bound("a-1", "n")]
    clock.now += 3
    assert admission.admit(B, WORKER, 2, own={}) is not None and listing.calls == 2
    assert admission.reserved() == []
    listing.pods = []  # A finished
    clock.now += 3
    assert admission.admit(B, WORKER, 2, own={}) is None and admission.waiting() == []


def test_a_reservation_outlives_listings_taken_before_its_pods_were_written() -> None:
    listing, clock = Listing([cpu_node("n", 3)]), Clock()
    admission = GangAdmission(listing, clock=clock)
    assert admission.admit(A, WORKER, 2, own={}) is None
    clock.now += 3  # the writes are slow: a listing is taken before they are done, and cannot show them
    assert admission.admit(B, WORKER, 2, own={}) is not None
    admission.written(A)
    assert admission.reserved() == [(WORKER, 2)]
    clock.now += 3
    listing.pods = [bound("a-0", "n"), bound("a-1", "n")]
    assert admission.admit(B, WORKER, 2, own={}) is not None
    assert admission.reserved() == []  # now the pods themselves count


def test_a_listing_taken_while_the_pods_are_written_counts_each_worker_once() -> None:
    """The CI flake this fixes: the pods in the listing *and* their reservation made B see 0 of 1 free."""
    listing, clock = Listing([cpu_node("n", 3)]), Clock()
    admission = GangAdmission(listing, clock=clock)
    assert admission.admit(A, WORKER, 2, own={"job": "a"}) is None
    clock.now += 3  # a listing is taken after A's pods were created, before A's pass marks them written
    listing.pods = [{**bound(f"a-{i}", "n"), "metadata": {"name": f"a-{i}", "namespace": "ml", "labels": {"job": "a"}}} for i in range(2)]
    assert admission.admit(B, WORKER, 2, own={"job": "b"}) == ("WaitingForCapacity", "waiting for room for the whole group: 2 workers of cpu 1 each, 1 fit now")
    assert admission.admit(C, WORKER, 1, own={"job": "c"}) is None
    assert admission.room_for(B, WORKER, 2, own={"job": "b"}) == 0  # and C's reservation counts


def test_a_reservation_whose_pods_were_never_written_expires() -> None:
    listing, clock = Listing([cpu_node("n", 3)]), Clock()
    admission = GangAdmission(listing, clock=clock, hold_for=60)
    assert admission.admit(A, WORKER, 2, own={}) is None
    clock.now += 61
    assert admission.admit(B, WORKER, 2, own={}) is None


def test_a_jobs_own_pods_and_reservation_never_count_against_it() -> None:
    listing, clock = Listing([cpu_node("n", 2)]), Clock()
    admission = GangAdmission(listing, clock=clock)
    listing.pods = [{**bound("a-0", "n"), "metadata": {"name": "a-0", "namespace": "ml", "labels": {"job": "a"}}}]
    assert admission.admit(A, WORKER, 2, own={"job": "a"}) is None
    assert admission.admit(A, WORKER, 2, own={"job": "a"}) is None  # again: its own reservation is replaced
    assert admission.admit(C, WORKER, 1, own={}) is not None
    admission.forget(A)
    clock.now += 3
    listing.pods = []
    assert admission.admit(C, WORKER, 1, own={}) is None


def test_gated_reads_the_gang_gate_only() -> None:
    assert gated({"spec": {"schedulingGates": [{"name": "lepton.ai/gang"}]}})
    assert not gated({"spec": {"schedulingGates": [{"name": "someone.else/gate"}]}})
    assert not gated({"spec": {}})


def test_invalidate_makes_the_next_decision_list_again() -> None:
    listing, clock = Listing([cpu_node("n", 1)]), Clock()
    admission = GangAdmission(listing, clock=clock)
    assert admission.admit(A, WORKER, 2, own={}) is not None
    listing.nodes = [cpu_node("n", 1), cpu_node("m", 1)]  # a node joins, within the listing's max age
    assert admission.admit(A, WORKER, 2, own={}) is not None and listing.calls == 1
    admission.invalidate()
    assert admission.admit(A, WORKER, 2, own={}) is None and listing.calls == 2


def test_a_slow_listing_serves_longer_so_listing_never_takes_more_than_its_share() -> None:
    """Thousands of pods take a second to list and parse: then one listing serves 10 s, not 2."""
    clock = Clock()
    listing = Listing([cpu_node("n", 100)])

    def slow() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        clock.now += 1.0
        return listing()

    admission = GangAdmission(slow, clock=clock, max_age=2.0)
    assert admission.admit(A, WORKER, 1, own={}) is None and listing.calls == 1
    clock.now += 8  # 9 s after the listing began: within 10 s
    assert admission.admit(B, WORKER, 1, own={}) is None and listing.calls == 1
    clock.now += 2
    assert admission.admit(C, WORKER, 1, own={}) is None and listing.calls == 2
    admission.invalidate()  # a node came: whatever the listing cost, the next decision lists again
    assert admission.admit(C, WORKER, 1, own={}) is None and listing.calls == 3
