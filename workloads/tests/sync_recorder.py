"""Records the syncs and renames a piece of code makes, in order, to check durable writes.

``os.fsync``, ``os.fdatasync`` and ``os.replace`` are wrapped (the real calls still happen):
a sync is recorded as ``("sync", <file or directory, relative to root>)``, a rename as
``("rename", <target's name>)``. Every module calls them through ``os``, so one patch of
``os`` sees them all, whichever module writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

Happened = list[tuple[str, str]]


def record_syncs(monkeypatch: pytest.MonkeyPatch, root: Path) -> Happened:
    """Start recording; the returned list fills as the code under test runs."""
    happened: Happened = []
    fsync, fdatasync, replace = os.fsync, os.fdatasync, os.replace

    def named(fd: int) -> str:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    def synced(real: Any) -> Any:
        def sync(fd: int) -> None:
            happened.append(("sync", named(fd)))
            real(fd)

        return sync

    def renamed(source: Any, target: Any) -> None:
        happened.append(("rename", Path(target).name))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", synced(fsync))
    monkeypatch.setattr(os, "fdatasync", synced(fdatasync))
    monkeypatch.setattr(os, "replace", renamed)
    return happened
