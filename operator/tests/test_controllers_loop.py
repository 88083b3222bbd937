"""The per-object reconcile loop: passes, wakeups, coalescing, retries, stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

import kopf
import pytest

from lepton_operator import controllers
from lepton_operator.api.meta import RESOURCES, TRAINING_JOB
from lepton_operator.controllers import loop
from lepton_operator.controllers.reconcile import validating
from lepton_operator.controllers.wakeups import ObjectKey, Wakeups, owner_key

LOGGER = logging.getLogger("test")
BODY = {"metadata": {"namespace": "ns", "name": "job", "generation": 1}, "spec": {"image": "t:1"}}
KEY = ObjectKey("TrainingJob", "ns", "job")


class Flag:
    def __init__(self) -> None:
        self.value = False

    def __bool__(self) -> bool:
        return self.value


class Harness:
    """Runs ``run_loop`` with a scripted reconciler and a recording status writer."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.passes: list[int] = []
        self.writes: list[dict[str, Any]] = []
        self.stopped = Flag()
        self.wakeups = Wakeups()
        self.started = asyncio.Event()
        self.pass_done = asyncio.Queue[int]()
        self.loop = asyncio.get_running_loop()
        self.live: Mapping[str, Any] | Exception | None = BODY

    def reconciler(
        self, body: Mapping[str, Any], status_patch: MutableMapping[str, Any], *, retry: int, logger: Any, warn: Any
    ) -> float | None:
        step = self.script[min(len(self.passes), len(self.script) - 1)]
        self.passes.append(retry)
        self.loop.call_soon_threadsafe(self.pass_done.put_nowait, len(self.passes))
        if isinstance(step, Exception):
            raise step
        status_patch.update({"pass": len(self.passes)})
        return step  # type: ignore[no-any-return]

    def write(self, info: Any, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.writes.append(dict(status))

    def read(self, info: Any, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The object the API server has now: ``self.live`` (the loop's own body unless a test changes it)."""
        if isinstance(self.live, Exception):
            raise self.live
        return self.live

    def start(self, resync: float = 60.0, body: Mapping[str, Any] = BODY,
              write: loop.StatusWriter | None = None) -> asyncio.Task[None]:  # fmt: skip
        """The loop of ``body`` (which the API server holds until a test sets ``live``)."""
        return asyncio.create_task(
            loop.run_loop(TRAINING_JOB, self.reconciler, body, self.stopped, LOGGER, lambda r, m: None,
                          write_status=write or self.write, read=self.read, wakeups=self.wakeups, resync=resync)  # fmt: skip
        )

    async def next_pass(self) -> int:
        return await asyncio.wait_for(self.pass_done.get(), 5)

    async def stop(self, task: asyncio.Task[None]) -> None:
        self.stopped.value = True
        self.wakeups.wake(KEY)
        await asyncio.wait_for(task, 5)


def test_first_pass_at_once_then_sleeps_until_woken() -> None:
    async def scenario() -> None:
        harness = Harness([None])
        task = harness.start()
        assert await harness.next_pass() == 1
        await asyncio.sleep(0.05)
        assert len(harness.passes) == 1  # nothing woke it
        harness.wakeups.wake(KEY)
        assert await harness.next_pass() == 2
        await harness.stop(task)
        assert harness.writes[:2] == [{"pass": 1}, {"pass": 2}]
        assert len(harness.wakeups) == 0  # forgotten when the loop ended

    asyncio.run(scenario())


def test_on_stop_runs_when_the_loop_ends() -> None:
    async def scenario() -> None:
        harness = Harness([None])
        stopped_keys: list[ObjectKey] = []
        task = asyncio.create_task(
            loop.run_loop(TRAINING_JOB, harness.reconciler, BODY, harness.stopped, LOGGER, lambda r, m: None,
                          write_status=harness.write, read=harness.read, wakeups=harness.wakeups, on_stop=stopped_keys.append)  # fmt: skip
        )
        await harness.next_pass()
        assert stopped_keys == []
        await harness.stop(task)
        assert stopped_keys == [KEY]

    asyncio.run(scenario())


def test_wakeups_during_a_pass_coalesce_into_one_more_pass() -> None:
    async def scenario() -> None:
        harness = Harness([None])
        task = harness.start()
        await harness.next_pass()
        for _ in range(40):
            harness.wakeups.wake(KEY)
        await harness.next_pass()
        await asyncio.sleep(0.05)
        assert len(harness.passes) == 2
        await harness.stop(task)

    asyncio.run(scenario())


def test_requested_deadline_runs_the_next_pass_without_a_wakeup() -> None:
    async def scenario() -> None:
        harness = Harness([0.01, None])
        task = harness.start()
        await harness.next_pass()
        assert await harness.next_pass() == 2
        await harness.stop(task)

    asyncio.run(scenario())


def test_temporary_errors_retry_with_their_delay_and_count_retries() -> None:
    async def scenario() -> None:
        harness = Harness([kopf.TemporaryError("boom", delay=0.01), kopf.TemporaryError("boom", delay=0.01), None])
        task = harness.start()
        for _ in range(3):
            await harness.next_pass()
        await harness.stop(task)
        assert harness.passes[:3] == [0, 1, 2]  # retry count seen by each pass, reset after success
        assert harness.writes == [{"pass": 3}]  # failed passes wrote nothing in this script

    asyncio.run(scenario())


def test_validating_reconciler_reports_invalid_spec_through_the_loop() -> None:
    async def scenario() -> None:
        writes: list[Mapping[str, Any]] = []
        stopped = Flag()
        wakeups = Wakeups()
        warnings: list[tuple[str, str]] = []
        body = {"metadata": {"namespace": "ns", "name": "job", "generation": 3}, "spec": {"workers": {"replicas": 0}}}

        def write(info: Any, namespace: str, name: str, status: Mapping[str, Any]) -> None:
            writes.append(status)
            stopped.value = True
            wakeups.wake(KEY)

        await asyncio.wait_for(
            loop.run_loop(TRAINING_JOB, validating("TrainingJob"), body, stopped, LOGGER,
                          lambda reason, message: warnings.append((reason, message)),
                          write_status=write, read=lambda info, namespace, name: body, wakeups=wakeups),  # fmt: skip
            5,
        )
        assert writes[0]["phase"] == "Failed" and writes[0]["observedGeneration"] == 3
        assert warnings and warnings[0][0] == "InvalidSpec"

    asyncio.run(scenario())


# Watchers a kind's objects have besides their own "wake": other loops woken by them, clean-ups.
OTHER_WATCHERS: dict[str, list[str]] = {
    "LeptonDataset": ["wake-trainingjob-dataset", "forget-metrics"],  # a job waits for its dataset; gauges go
    "TrainingJob": ["training-metrics", "wake-inferenceservice-on-trainingjob"],  # gauges; a service waits on its job
}


@pytest.mark.parametrize("info", RESOURCES, ids=lambda info: info.kind)
def test_each_kind_is_one_loop_woken_by_its_own_events(info: Any) -> None:
    daemons = [h for h in controllers.REGISTRY._spawning.get_all_handlers() if h.selector.any_name == info.plural]
    watchers = [h for h in controllers.REGISTRY._watching.get_all_handlers() if h.selector.any_name == info.plural]
    changing = [h for h in controllers.REGISTRY._changing.get_all_handlers() if h.selector.any_name == info.plural]
    assert [h.id for h in daemons] == ["loop"]
    assert sorted(h.id for h in watchers) == sorted(["wake", *OTHER_WATCHERS.get(info.kind, [])])
    assert changing == []  # level-based: no create/update edges to miss


def test_owner_key_comes_from_the_owner_label() -> None:
    child = {"metadata": {"namespace": "ns", "labels": {"lepton.ai/trainingjob": "job"}}}
    assert owner_key("TrainingJob", "lepton.ai/trainingjob", child) == KEY
    assert owner_key("TrainingJob", "lepton.ai/trainingjob", {"metadata": {"namespace": "ns"}}) is None


def test_children_wake_their_owner_through_the_owner_label() -> None:
    registry = kopf.OperatorRegistry()
    loop.wake_owner_on(TRAINING_JOB, "", "v1", "pods", registry=registry)
    [handler] = registry._watching.get_all_handlers()
    assert handler.id == "wake-trainingjob"
    assert handler.labels == {"lepton.ai/trainingjob": kopf.PRESENT}
    key = ObjectKey("TrainingJob", "ns", "job")
    handler_fn: Any = handler.fn
    asyncio.run(handler_fn(body={"metadata": {"namespace": "ns", "labels": {"lepton.ai/trainingjob": "job"}}}))
    assert loop.WAKEUPS._flag(key).is_set()
    loop.WAKEUPS.forget(key)


@pytest.mark.parametrize("info", RESOURCES, ids=lambda info: info.kind)
def test_loops_put_no_finalizer_on_objects(info: Any) -> None:
    """A stopped operator must never block deletions (or namespace deletions)."""
    [daemon] = [h for h in controllers.REGISTRY._spawning.get_all_handlers() if h.selector.any_name == info.plural]
    assert daemon.requires_finalizer is False


def with_uid(uid: str) -> dict[str, Any]:
    metadata: dict[str, Any] = dict(BODY["metadata"])  # type: ignore[call-overload]  # BODY's values are plain objects
    return {**BODY, "metadata": {**metadata, "uid": uid}}


def test_a_deleted_object_ends_its_loop_and_a_recreated_one_gets_a_fresh_loop() -> None:
    async def scenario() -> None:
        harness = Harness([None])
        harness.live = with_uid("old")
        task = harness.start(body=with_uid("old"))
        await harness.next_pass()
        harness.wakeups.end(KEY, "old")
        await asyncio.wait_for(task, 5)  # ended without `stopped`
        assert not harness.wakeups.ended("old")  # forgotten: nothing leaks per deleted object
        harness.live = with_uid("new")
        task = harness.start(body=with_uid("new"))
        await harness.next_pass()
        await harness.stop(task)

    asyncio.run(scenario())


def test_a_loop_whose_object_went_unseen_ends_without_a_pass() -> None:
    """After a watch gap (410 Gone, re-list) no DELETED event comes: the fresh read ends the loop."""

    async def scenario() -> None:
        harness = Harness([None])
        harness.live = with_uid("old")
        gone: list[ObjectKey] = []
        task = asyncio.create_task(
            loop.run_loop(TRAINING_JOB, harness.reconciler, with_uid("old"), harness.stopped, LOGGER, lambda r, m: None,
                          write_status=harness.write, read=harness.read, wakeups=harness.wakeups, on_gone=gone.append)  # fmt: skip
        )
        await harness.next_pass()
        assert gone == []
        harness.live = with_uid("recreated")  # deleted, then made again
        harness.wakeups.wake(KEY)
        await asyncio.wait_for(task, 5)  # ended without `stopped`, and without a second pass
        assert len(harness.passes) == 1 and gone == [KEY]  # what its DELETED handler would have done, done
        harness.live = None
        task = harness.start(body=with_uid("old"))
        await asyncio.wait_for(task, 5)  # gone before its first pass: no pass at all
        assert len(harness.passes) == 1

    asyncio.run(scenario())


def test_failed_reads_and_status_writes_are_retried_by_the_loop_not_by_kopf() -> None:
    """An API server that is down fails the read, then the status write: the loop retries, it never raises."""

    async def scenario() -> None:
        harness = Harness([None])
        harness.live = ConnectionError("connection refused")
        failures = [ConnectionError("connection reset")]

        def write(info: Any, namespace: str, name: str, status: Mapping[str, Any]) -> None:
            if failures:
                raise failures.pop()
            harness.writes.append(dict(status))

        task = harness.start(write=write)
        await asyncio.sleep(0.05)
        assert harness.passes == [] and not task.done()  # waiting out its backoff
        harness.live = BODY
        harness.wakeups.wake(KEY)
        assert await harness.next_pass() == 1
        harness.wakeups.wake(KEY)  # the write of pass 1 failed: pass 2 writes again
        assert await harness.next_pass() == 2
        assert harness.passes == [1, 1]  # each pass after a failure (the read, then the write) is a retry
        await harness.stop(task)
        assert harness.writes and not task.exception()

    asyncio.run(scenario())


def test_a_pass_decides_from_the_object_as_stored_not_from_the_daemons_copy() -> None:
    """kopf's body may predate the loop's own last status write; the pass gets the API server's."""

    async def scenario() -> None:
        harness = Harness([None])
        seen: list[Mapping[str, Any]] = []
        reconcile = harness.reconciler

        def recording(body: Mapping[str, Any], status_patch: MutableMapping[str, Any], **kwargs: Any) -> float | None:
            seen.append(body)
            return reconcile(body, status_patch, **kwargs)

        harness.reconciler = recording  # type: ignore[method-assign]
        harness.live = {**BODY, "status": {"phase": "Suspended", "group": 1}}
        task = harness.start(body={**BODY, "status": {"phase": "Running", "group": 0}})
        await harness.next_pass()
        await harness.stop(task)
        assert seen[0]["status"] == {"phase": "Suspended", "group": 1}

    asyncio.run(scenario())


def test_a_permanent_error_waits_for_a_wakeup_instead_of_retrying() -> None:
    async def scenario() -> None:
        harness = Harness([kopf.PermanentError("refused"), None])
        task = harness.start(resync=60.0)
        assert await harness.next_pass() == 1
        await asyncio.sleep(0.05)
        assert len(harness.passes) == 1  # no retry on its own
        harness.wakeups.wake(KEY)  # e.g. the spec changed
        assert await harness.next_pass() == 2
        await harness.stop(task)
        assert harness.passes[:2] == [0, 0]  # a refusal is not counted as a retry

    asyncio.run(scenario())
