"""Sharing one local cluster between concurrent sessions (pytest runs, the demo).

Each user records its pid in ``<state>/users/``; a test session that created the
cluster marks it *ephemeral*, and whichever registered session ends last deletes
it. A cluster someone asked for explicitly (``python -m localcluster up``,
``make demo``) is not ephemeral and stays up. Entries of dead pids are dropped
as they are found, so a killed session never pins the cluster forever.
"""

from __future__ import annotations

import os
from pathlib import Path

from localcluster.paths import state_dir


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed component may linger unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True




def _users_dir() -> Path:
    return state_dir() / "users"


def register_user() -> None:
    """Record this process as a user of the cluster (see :func:`other_users`)."""
    _users_dir().mkdir(parents=True, exist_ok=True)
    (_users_dir() / str(os.getpid())).touch()


def unregister_user() -> None:
    (_users_dir() / str(os.getpid())).unlink(missing_ok=True)


def _ephemeral_marker() -> Path:
    return state_dir() / "ephemeral"


def mark_ephemeral(value: bool = True) -> None:
    """Record that a test session created the cluster and wants it gone when the last user ends
    (``False``: someone asked for it explicitly, e.g. ``python -m localcluster up``; keep it)."""
    if value:
        state_dir().mkdir(parents=True, exist_ok=True)
        _ephemeral_marker().touch()
    else:
        _ephemeral_marker().unlink(missing_ok=True)


def is_ephemeral() -> bool:
    return _ephemeral_marker().is_file()


def other_users() -> list[int]:
    """Live pids other than this one that registered as users (stale entries are removed)."""
    pids = []
    for entry in _users_dir().glob("*") if _users_dir().is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if pid_alive(int(entry.name)):
            pids.append(int(entry.name))
        else:
            entry.unlink(missing_ok=True)
    return pids
