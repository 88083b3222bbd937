"""Deleted objects remembered by uid, so that a pass in flight at the deletion does not bring their metrics back.

A reconcile pass runs in a worker thread (``loop``) that a deletion does not stop,
while the kind's DELETED event handler removes the object's series. A pass that
ends after that handler would record them again, for an object that no longer
exists, and nothing would ever remove them. So both go through :data:`DELETED`
under one lock: the handler notes the uid and drops the series
(:meth:`Deleted.forget`), a pass records only for a uid not noted
(:meth:`Deleted.record`). A record thus lands before the removal or not at all;
an object re-created under the same name has a new uid and records as usual.
Bounded: the newest :data:`REMEMBERED` uids.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

REMEMBERED = 4096


class Deleted:
    """The uids of deleted objects, and the lock their metric writes share; see the module docstring."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self._uids: deque[str] = deque(maxlen=size)
        self._lock = threading.Lock()

    def forget(self, uid: str, drop: Callable[[], None]) -> None:
        """Note ``uid`` as deleted (when known) and run ``drop`` (remove its series)."""
        with self._lock:
            if uid:
                self._uids.append(uid)
            drop()

    def record(self, uid: str, write: Callable[[], None]) -> None:
        """Run ``write`` (record its series) unless ``uid`` was deleted."""
        with self._lock:
            if uid not in self._uids:
                write()


DELETED = Deleted()
