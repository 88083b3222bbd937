"""Publishing a file so that a crash leaves either the old file or the whole new one: write, sync, rename, sync.

Renaming a finished temporary file over the target is atomic for readers, but not
durable: the kernel may put the rename on the disk before the file's data, so
after a node crash (power, kernel panic, a hypervisor reset) the new name can
point at an empty or short file. A checkpoint torn that way loses the run; a
``config.pbtxt`` next to an empty ``model.pt`` makes Triton refuse the model. The
order that rules it out, and the only one every writer of the workloads uses
(:func:`replace`):

1. write the temporary file ``.<name>.tmp`` in the target's directory (same
   filesystem, so the rename is atomic; a fixed name, so a crashed writer's
   leftover is overwritten by the next try rather than piling up);
2. ``fsync`` it: its bytes are on the disk before any name points at them;
3. ``os.replace`` it over the target;
4. ``fsync`` the directory: the rename itself is on the disk when the call returns,
   so what the caller publishes next (a manifest after its shards, a sidecar after
   its checkpoint) is never ahead of it.

Directories the files go into are made with :func:`make_directories`, which syncs each
new one into its parent.

A failure before the rename (the writer raises, the disk is full, the sync
fails) removes the temporary file and leaves the previous target untouched.

The writer callback gets the temporary *path*, not an open file, because the
exporters it serves (``torch.jit.save``, ONNX's ``save`` and checker) take paths;
the sync reopens the file, which on Linux syncs what any descriptor wrote.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def temporary_of(path: Path) -> Path:
    """Where :func:`replace` writes ``path``'s content before renaming it into place."""
    return path.with_name(f".{path.name}.tmp")


def _sync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(path: Path) -> None:
    """Put ``path``'s bytes (written through any descriptor) on the disk."""
    _sync(path, os.O_RDONLY)


def sync_directory(path: Path) -> None:
    """Put ``path``'s entries (files created, renamed into it or removed from it) on the disk."""
    _sync(path, os.O_RDONLY | os.O_DIRECTORY)


def make_directories(path: Path) -> None:
    """``mkdir -p path``, each directory it creates synced into its parent (a renamed file in a
    directory whose own entry a crash takes back is lost all the same)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        sync_directory(directory.parent)


def replace(path: Path, write: Callable[[Path], object]) -> None:
    """Make ``path`` what ``write(temporary)`` writes, atomically and durably (module docstring)."""
    temporary = temporary_of(path)
    try:
        write(temporary)
        sync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def write_text(path: Path, text: str) -> None:
    """:func:`replace` ``path`` with ``text`` (UTF-8)."""
    replace(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
