"""One reconcile loop per object: a kopf daemon that runs a pass, then sleeps until woken.

This is the operator's reconcile model, level-based as in controller-runtime:
a pass reads the object as it is now (a GET, see below),
runs the kind's reconciler in a worker thread (reconcilers use the synchronous
API client), merge-patches the status it computed, and sleeps until the object's
spec changes, a child changes (``wakeups``), the reconciler's requested
deadline comes (a backoff, a TTL), or the periodic resync. Passes of one object
never overlap; passes of different objects run side by side. kopf stops every
daemon while peering has paused this replica, so a standby replica never acts.

A reconciler never crashes the loop: it reports bad input as status, and the
loop turns an unexpected exception into a retry with exponential backoff (the
reconciler records the ``ReconcileError`` condition itself, see ``reconcile``).
A status write that fails (the API server is down) is retried the same way,
never left to kopf, which would restart the whole daemon only after its own
30 s backoff.

Each pass starts from the object as the API server has it now (one GET), not
from kopf's copy: after an API server or etcd restart kopf's watch may resume
with "410 Gone" and re-list, and a re-list says nothing of the objects deleted
in the gap, so no DELETED event ever ends their loops. A loop whose object is
gone, or was re-created under the same name (another uid), ends there instead of
applying children for an owner that no longer exists (which the garbage
collector deletes, whose deletion wakes the loop, which applies them again:
orphans forever, seen in ``e2e/tests/test_chaos_cluster.py``).
A ``kopf.PermanentError`` (the API server refused a child as invalid: the spec's
fault, recorded as ``InvalidSpec``) is not retried until something wakes the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, Protocol

import kopf

from lepton_operator import metrics
from lepton_operator.api.meta import API_VERSION, GROUP, VERSION, ResourceInfo
from lepton_operator.controllers import kube
from lepton_operator.controllers.config import retry_delay
from lepton_operator.controllers.reconcile import Logger, Warn, event_poster
from lepton_operator.controllers.wakeups import WAKEUPS, ObjectKey, Wakeups, owner_key
from lepton_operator.render.common import owner_label
from lepton_operator.status.validation import to_plain

#: Seconds between passes when nothing wakes the loop: a safety net for missed events.
RESYNC_SECONDS = 300.0
#: Seconds kopf waits for a stopping loop before cancelling it.
CANCELLATION_TIMEOUT = 2.0


class Reconciler(Protocol):
    """One pass over one object: fill ``status_patch``; return seconds until the next pass is due.

    Runs in a worker thread. Returns ``None`` when only a change should wake it
    again. Raises ``kopf.TemporaryError`` (with a delay) for unexpected failures, ``kopf.PermanentError``
    for ones that only a spec change can fix.
    """

    def __call__(
        self, body: Mapping[str, Any], status_patch: MutableMapping[str, Any], *, retry: int, logger: Logger, warn: Warn
    ) -> float | None: ...


StatusWriter = Callable[[ResourceInfo, str, str, Mapping[str, Any]], None]
#: Reads one object of a kind from the API server: ``None`` when it does not exist.
Reader = Callable[[ResourceInfo, str, str], Mapping[str, Any] | None]


def read_live(info: ResourceInfo, namespace: str, name: str) -> Mapping[str, Any] | None:
    """The object as the API server has it now (a GET), ``None`` when it is gone."""
    return kube.get(API_VERSION, info.kind, namespace, name)


def same_object(uid: str, found: Mapping[str, Any] | None) -> bool:
    """Whether ``found`` (a fresh read) is still the object of the loop of ``uid``.

    ``False`` when it is gone or was re-created under its name: either way this loop's
    object no longer exists. A loop with no uid (tests, odd bodies) accepts any object.
    """
    if found is None:
        return False
    return not uid or str((found.get("metadata") or {}).get("uid", "")) == uid


def object_key(info: ResourceInfo, body: Mapping[str, Any]) -> ObjectKey:
    metadata = body.get("metadata") or {}
    return ObjectKey(info.kind, str(metadata.get("namespace", "")), str(metadata.get("name", "")))


async def run_loop(
    info: ResourceInfo,
    reconciler: Reconciler,
    body: Mapping[str, Any],
    stopped: Any,
    logger: Logger,
    warn: Warn,
    *,
    write_status: StatusWriter = kube.patch_status,
    read: Reader = read_live,
    wakeups: Wakeups = WAKEUPS,
    resync: float = RESYNC_SECONDS,
    on_stop: Callable[[ObjectKey], None] | None = None,
    on_gone: Callable[[ObjectKey], None] | None = None,
) -> None:
    """Reconcile ``body`` until ``stopped``; see the module docstring.

    ``on_stop`` runs when the loop ends (the object is gone, or peering paused
    this replica), e.g. to drop the object from a process-wide loop such as the
    autoscaler's. ``on_gone`` runs before it when a pass finds the object gone:
    what a DELETED handler would have done, had its event not been lost.
    """
    key = object_key(info, body)
    uid = str((body.get("metadata") or {}).get("uid", ""))
    retry = 0
    try:
        while not stopped and not wakeups.ended(uid):
            try:
                found = await asyncio.to_thread(read, info, key.namespace, key.name)
            except Exception as error:
                retry += 1
                delay = retry_delay(retry)
                logger.warning(f"cannot read the object, retrying in {delay:.0f} s: {type(error).__name__}: {error}")
                await wakeups.sleep(key, delay)
                continue
            if not same_object(uid, found):
                logger.info(f"{info.kind} {key.namespace}/{key.name} ({uid}) is gone: its loop ends")
                if on_gone is not None:
                    on_gone(key)
                break
            status_patch: dict[str, Any] = {}
            snapshot = to_plain(found)  # detached from the reader's object for the thread
            try:
                due = await asyncio.to_thread(
                    reconciler, snapshot, status_patch, retry=retry, logger=logger, warn=warn
                )
                retry = 0
                delay = resync if due is None else min(max(due, 0.0), resync)
            except kopf.TemporaryError as error:
                retry += 1
                delay = float(error.delay) if error.delay is not None else retry_delay(retry)
                logger.warning(f"pass failed, retrying in {delay:.0f} s: {error}")
            except kopf.PermanentError as error:  # retrying cannot help: wait for a change (or the resync)
                retry = 0
                delay = resync
                logger.warning(f"pass refused, waiting for the spec to change: {error}")
            if status_patch:
                try:
                    await asyncio.to_thread(write_status, info, key.namespace, key.name, status_patch)
                except Exception as error:
                    retry += 1
                    delay = min(delay, retry_delay(retry))
                    logger.warning(f"status write failed, retrying in {delay:.0f} s: {type(error).__name__}: {error}")
            phase = status_patch.get("phase", (snapshot.get("status") or {}).get("phase"))
            metrics.record_phase(info.kind, key.namespace, key.name, phase or "Unknown")
            await wakeups.sleep(key, delay)
    finally:
        wakeups.forget(key, uid)
        metrics.record_phase(info.kind, key.namespace, key.name, None)
        if on_stop is not None:
            on_stop(key)


def register(info: ResourceInfo, reconciler: Reconciler, *, on_stop: Callable[[ObjectKey], None] | None = None,
             on_gone: Callable[[ObjectKey], None] | None = None) -> None:  # fmt: skip
    """Run ``reconciler`` in one loop per ``info`` object, woken by changes of its spec (see ``run_loop``).

    kopf puts a finalizer on every object that has a daemon, so that it can
    stop the daemon before the object goes. We take it off: children go with
    their owner through owner references, so nothing needs a finalizer, and
    with one a stopped operator would leave every deletion (and every namespace
    deletion) hanging, the deadlock Fluid users know. Instead the loop ends
    itself on the object's DELETED event.
    """
    generations: dict[ObjectKey, int] = {}

    @kopf.daemon(GROUP, VERSION, info.plural, id="loop", cancellation_timeout=CANCELLATION_TIMEOUT)
    async def loop(body: kopf.Body, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any) -> None:
        await run_loop(info, reconciler, body, stopped, logger, event_poster(body), on_stop=on_stop, on_gone=on_gone)

    without_finalizer(kopf.get_default_registry(), loop)

    @kopf.on.event(GROUP, VERSION, info.plural, id="wake")
    async def wake_on_spec_change(body: kopf.Body, type: str | None, **_: Any) -> None:
        key = object_key(info, body)
        if type == "DELETED":
            generations.pop(key, None)
            WAKEUPS.end(key, str(body.get("metadata", {}).get("uid", "")))
            return
        generation = int(body.get("metadata", {}).get("generation") or 0)
        if generations.get(key, generation) != generation:
            WAKEUPS.wake(key)
        generations[key] = generation


def without_finalizer(registry: kopf.OperatorRegistry, fn: Any) -> None:
    """Make the daemon handler of ``fn`` not require kopf's finalizer (kopf hard-codes it on)."""
    spawning = registry._spawning  # noqa: SLF001 - kopf has no public switch for this
    spawning._handlers = [  # noqa: SLF001
        dataclasses.replace(handler, requires_finalizer=False) if handler.fn is fn else handler
        for handler in spawning._handlers  # noqa: SLF001
    ]


def wake_on(
    group: str,
    version: str,
    plural: str,
    keys_of: Callable[[Mapping[str, Any]], Iterable[ObjectKey]],
    *,
    labels: Mapping[str, Any] | None = None,
    handler_id: str,
    registry: kopf.OperatorRegistry | None = None,
) -> None:
    """Wake the loops of ``keys_of(obj)`` on every event of ``plural`` objects (e.g. a Dataset's jobs)."""

    @kopf.on.event(group, version, plural, labels=dict(labels or {}), id=handler_id, registry=registry)
    async def wake(body: kopf.Body, **_: Any) -> None:
        for key in keys_of(body):
            WAKEUPS.wake(key)


def wake_owner_on(
    info: ResourceInfo, group: str, version: str, plural: str, *, registry: kopf.OperatorRegistry | None = None
) -> None:
    """Wake an ``info`` object's loop when one of its children (found by owner label) changes."""
    label = owner_label(info.kind)

    def owners(child: Mapping[str, Any]) -> list[ObjectKey]:
        key = owner_key(info.kind, label, child)
        return [key] if key is not None else []

    wake_on(
        group, version, plural, owners, labels={label: kopf.PRESENT}, handler_id=f"wake-{info.singular}", registry=registry
    )
