"""One reconcile loop per object: a kopf daemon that runs a pass, then sleeps until woken.

This is the operator's reconcile model, level-based as in controller-runtime:
a pass reads the object as it is now (kopf keeps the daemon's ``body`` live),
runs the kind's reconciler in a worker thread (reconcilers use the synchronous
API client), merge-patches the status it computed, and sleeps until the object's
spec changes, a child changes (``wakeups``), the reconciler's requested
deadline comes (a backoff, a TTL), or the periodic resync. Passes of one object
never overlap; passes of different objects run side by side. kopf stops every
daemon while peering has paused this replica, so a standby replica never acts.

A reconciler never crashes the loop: it reports bad input as status, and the
loop turns an unexpected exception into a retry with exponential backoff (the
reconciler records the ``ReconcileError`` condition itself, see ``reconcile``).
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
from lepton_operator.api.meta import GROUP, VERSION, ResourceInfo
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
    wakeups: Wakeups = WAKEUPS,
    resync: float = RESYNC_SECONDS,
    on_stop: Callable[[ObjectKey], None] | None = None,
) -> None:
    """Reconcile ``body`` until ``stopped``; see the module docstring.

    ``on_stop`` runs when the loop ends (the object is gone, or peering paused
    this replica), e.g. to drop the object from a process-wide loop such as the
    autoscaler's.
    """
    key = object_key(info, body)
    uid = str((body.get("metadata") or {}).get("uid", ""))
    retry = 0
    try:
        while not stopped and not wakeups.ended(uid):
            status_patch: dict[str, Any] = {}
            snapshot = to_plain(body)  # detached from kopf's live body for the thread
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
                await asyncio.to_thread(write_status, info, key.namespace, key.name, status_patch)
            phase = status_patch.get("phase", (snapshot.get("status") or {}).get("phase"))
            metrics.record_phase(info.kind, key.namespace, key.name, phase or "Unknown")
            await wakeups.sleep(key, delay)
    finally:
        wakeups.forget(key, uid)
        metrics.record_phase(info.kind, key.namespace, key.name, None)
        if on_stop is not None:
            on_stop(key)


def register(info: ResourceInfo, reconciler: Reconciler, *, on_stop: Callable[[ObjectKey], None] | None = None) -> None:
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
        await run_loop(info, reconciler, body, stopped, logger, event_poster(body), on_stop=on_stop)

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
