"""Live progress: read running workloads' ``GET /progress`` and wake their loop when it moved.

A termination message arrives only when a pod ends. While a TrainingJob's
group runs (worker 0, where global rank 0 serves) and while a LeptonDataset's
prepare Job runs (its running pod), the workload answers ``GET /progress`` on
the container port named ``progress`` (``render.common``). This module is the
one place that reads it, for both kinds:

* :func:`target_of` says where a pod serves (its IP and that named port); a pod
  that is not Running, has no IP yet, or declares no such port has none.
* :func:`fetch` is the one HTTP read (aiohttp, async, on the operator's event
  loop): a JSON object, or ``None`` for anything else - refused, unreachable,
  timed out (:data:`TIMEOUT_SECONDS`), not 200, not JSON, too large. ``None``
  means "unknown", never "no progress".
* :class:`ProgressPoller` is one asyncio task for every watched object, not a
  timer per object (like the autoscaler). Reconcile passes say what to watch
  (:meth:`~ProgressPoller.watch`, from their worker threads: it is locked) and
  read the last document (:meth:`~ProgressPoller.live`, by pod uid). The
  poller reads each target every ``interval`` seconds and wakes the object's
  loop only when the document changed, so a job whose progress stands still,
  or whose pod cannot be reached, costs no pass and no API request. A target
  that fails is read less often (``interval`` doubled per failure, up to
  :data:`MAX_BACKOFF_SECONDS`), so unreachable pods (kwok's fake IPs, a
  user's trainer without the endpoint) cost one short request a minute. A
  failed read keeps the last document; the status functions keep the last
  progress shown. A new pod (restart, retry) starts from no document.

Passes never wait on the network: the reads happen on the event loop,
concurrently (at most :data:`CONCURRENCY` at once), each bounded by the
timeout. The loop ending (object deleted, replica paused by peering) calls
:meth:`~ProgressPoller.forget`, so a standby replica polls nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from lepton_operator.controllers.startup import options_of, spawn
from lepton_operator.controllers.wakeups import WAKEUPS, ObjectKey, Wakeups
from lepton_operator.render.common import PROGRESS_PORT_NAME

PATH = "/progress"
POLL_SECONDS = 10.0
TIMEOUT_SECONDS = 1.5
MAX_BACKOFF_SECONDS = 60.0
#: Reads in flight at once; the rest wait their turn (before their own timeout starts).
CONCURRENCY = 64
#: A progress document is a few hundred bytes; anything much larger is not one.
MAX_BYTES = 64 * 1024
#: How often the poller looks for targets that are due (a new target waits at most this long).
TICK_SECONDS = 1.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where one pod serves its progress."""

    pod_uid: str
    url: str


def target_of(pod: Mapping[str, Any]) -> Target | None:
    """The progress endpoint of a running pod: ``http://<podIP>:<port named progress>/progress``."""
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    ip, uid = status.get("podIP"), metadata.get("uid")
    if status.get("phase") != "Running" or metadata.get("deletionTimestamp") or not ip or not uid:
        return None
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == PROGRESS_PORT_NAME and port.get("containerPort"):
                host = f"[{ip}]" if ":" in str(ip) else str(ip)
                return Target(str(uid), f"http://{host}:{port['containerPort']}{PATH}")
    return None


async def fetch(
    url: str, *, session: aiohttp.ClientSession | None = None, timeout: float = TIMEOUT_SECONDS
) -> dict[str, Any] | None:
    """The JSON object ``url`` answers with, or ``None`` (unknown) for any failure; never raises."""
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await fetch(url, session=own, timeout=timeout)
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as response:
            if response.status != 200:
                log.debug("progress %s: HTTP %s", url, response.status)
                return None
            body = bytearray()
            async for chunk in response.content.iter_chunked(8192):
                body += chunk
                if len(body) > MAX_BYTES:
                    return None
        document = json.loads(body)
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as error:
        log.debug("progress %s: %s", url, type(error).__name__)
        return None
    return document if isinstance(document, dict) else None


@dataclass
class _Watch:
    target: Target
    document: dict[str, Any] | None = None
    failures: int = 0
    due: float = 0.0


class ProgressPoller:
    """Reads the watched targets' progress and wakes the loops whose progress moved (module docstring)."""

    def __init__(self, wakeups: Wakeups = WAKEUPS, *, interval: float = POLL_SECONDS, timeout: float = TIMEOUT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.wakeups = wakeups
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._watches: dict[ObjectKey, _Watch] = {}

    def watch(self, key: ObjectKey, target: Target | None) -> None:
        """Read ``target`` for ``key`` from now on (``None``: read nothing); the same target keeps its state."""
        with self._lock:
            if target is None:
                self._watches.pop(key, None)
            elif key not in self._watches or self._watches[key].target != target:
                self._watches[key] = _Watch(target, due=self.clock())

    def forget(self, key: ObjectKey) -> None:
        """The object's loop ended."""
        self.watch(key, None)

    def live(self, key: ObjectKey) -> dict[str, dict[str, Any]]:
        """The last document read for ``key``, by the uid of the pod that served it (empty when none)."""
        with self._lock:
            found = self._watches.get(key)
            if found is None or found.document is None:
                return {}
            return {found.target.pod_uid: found.document}

    def __len__(self) -> int:
        with self._lock:
            return len(self._watches)

    async def poll(self, session: aiohttp.ClientSession) -> list[ObjectKey]:
        """Read every target that is due, concurrently; wake and return the keys whose document changed."""
        now = self.clock()
        with self._lock:
            due = [(key, watch.target) for key, watch in self._watches.items() if watch.due <= now]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def read(url: str) -> dict[str, Any] | None:
            async with gate:
                return await fetch(url, session=session, timeout=self.timeout)

        documents = await asyncio.gather(*(read(target.url) for _, target in due))
        changed: list[ObjectKey] = []
        with self._lock:
            for (key, target), document in zip(due, documents, strict=True):
                watch = self._watches.get(key)
                if watch is None or watch.target != target:
                    continue  # retargeted or forgotten while reading
                if document is None:
                    watch.failures += 1
                    watch.due = now + min(self.interval * 2 ** min(watch.failures - 1, 16), MAX_BACKOFF_SECONDS)
                    continue
                watch.failures, watch.due = 0, now + self.interval
                if document != watch.document:
                    watch.document = document
                    changed.append(key)
        for key in changed:
            self.wakeups.wake(key)
        return changed

    async def run(self, tick: float = TICK_SECONDS) -> None:
        """Poll forever (until cancelled); one HTTP session for every read, no proxy from the environment."""
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
            while True:
                started = self.clock()
                await self.poll(session)
                await asyncio.sleep(max(0.0, tick - (self.clock() - started)))


PROGRESS = ProgressPoller()


@kopf.on.startup()
async def start_progress_poller(memo: kopf.Memo, **_: Any) -> None:
    """Start the one poller (it reads only what the reconcile loops of this replica watch)."""
    PROGRESS.interval = options_of(memo).progress_interval
    spawn(PROGRESS.run(), "progress poller")
