"""Wake an object's reconcile loop when something it depends on changes.

Every Lepton object is reconciled by one loop (``loop.py``) that sleeps between
passes. Watch handlers for its children (pods, jobs, claims...) and for the
object itself call :meth:`Wakeups.wake` with the object's key; the loop's
:meth:`Wakeups.sleep` returns at once. Wakeups coalesce: a burst of forty pod
events during one pass causes one more pass, not forty, which is what keeps the
API load per job flat. A key nobody sleeps on yet still remembers the wakeup,
so an event that lands between two passes is never lost.

All methods run on the operator's event loop (kopf's async handlers), so no
locking is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, NamedTuple


class ObjectKey(NamedTuple):
    """Which object a loop reconciles."""

    kind: str
    namespace: str
    name: str


class Wakeups:
    """One coalescing wake-up flag per object."""

    def __init__(self) -> None:
        self._flags: dict[ObjectKey, asyncio.Event] = {}
        self._ended: set[str] = set()

    def _flag(self, key: ObjectKey) -> asyncio.Event:
        return self._flags.setdefault(key, asyncio.Event())

    def wake(self, key: ObjectKey) -> None:
        """Ask the loop of ``key`` for another pass as soon as possible."""
        self._flag(key).set()

    async def sleep(self, key: ObjectKey, timeout: float) -> bool:
        """Wait until woken or ``timeout`` seconds pass; ``True`` when woken."""
        flag = self._flag(key)
        try:
            await asyncio.wait_for(flag.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            flag.clear()
        return True

    def end(self, key: ObjectKey, uid: str) -> None:
        """The object ``uid`` is gone: its loop ends at its next wakeup (which this is).

        By uid, not by name: an object re-created under the same name gets a
        new loop that must not inherit the old one's ending.
        """
        self._ended.add(uid)
        self.wake(key)

    def ended(self, uid: str) -> bool:
        return uid in self._ended

    def forget(self, key: ObjectKey, uid: str | None = None) -> None:
        """Drop the flag of an object whose loop has ended."""
        self._flags.pop(key, None)
        if uid is not None:
            self._ended.discard(uid)

    def __len__(self) -> int:
        return len(self._flags)


def owner_key(kind: str, label: str, child: Mapping[str, Any]) -> ObjectKey | None:
    """The key of the ``kind`` object that ``child`` belongs to, from its owner label."""
    metadata = child.get("metadata") or {}
    owner = (metadata.get("labels") or {}).get(label)
    namespace = metadata.get("namespace")
    if not owner or not namespace:
        return None
    return ObjectKey(kind, namespace, owner)


WAKEUPS = Wakeups()
