"""Writing a file while hashing it, the hashing and the writing each on a thread of its own.

Every byte the workloads write for a dataset is hashed on the way (a shard's sha256 for the
manifest, a download's for ``verify.sha256``), and both the hash and the write are full passes
over the bytes: sha256 runs at 1-2 GB/s on one core, a write into a fresh page cache at a few
hundred MB/s on these machines. Done in turn on the producing thread they add up to several times
the cost of reading the bytes in. Here the producer hands each piece to a hasher thread and a
writer thread, which run alongside it and alongside each other (``hashlib`` and ``os.write``
release the GIL on large buffers), so a file takes about as long as the slowest of reading,
hashing and writing instead of their sum.

* Pieces are shared, never copied: ``bytes`` that both threads read. They are handed over in
  batches of about :data:`GATHER_BYTES` (at most :data:`GATHER_PIECES` pieces), so the threads
  wake per megabyte rather than per 512-byte tar header, and the writer puts a batch on the file
  with one ``os.writev``.
* Memory is bounded: when the threads are :data:`IN_FLIGHT_BYTES` behind, :meth:`write` waits,
  so a dataset of any size holds at most that much plus one piece.
* Both threads consume the same pieces in the same order, so the digest is the digest of exactly
  the bytes written. The first error of either thread is raised by the next :meth:`write` or by
  :meth:`close`; after one, the threads only drain their queues, so the producer never blocks.
* Leaving a ``with`` block stops the threads and closes the file whatever happened; :meth:`close`
  (idempotent) is what returns the size and digest, and raises what went wrong.
* ``durable=True`` (a dataset's shards) puts the bytes on the disk before :meth:`close`
  returns: the writer thread calls ``fdatasync`` every :data:`SYNC_EVERY_BYTES`, so the disk
  writes back while the producer goes on (a sync at the end alone would wait for the whole file),
  and :meth:`close` syncs the tail. A manifest published after its shards' ``close`` never
  names bytes that a node crash can take back.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

GATHER_BYTES = 1 << 20
"""Pieces are handed over once this many bytes are gathered..."""
GATHER_PIECES = 256
"""...or this many pieces (well under the ``writev`` limit of 1024)."""
IN_FLIGHT_BYTES = 32 << 20
"""How far the hasher or the writer may fall behind the producer before :meth:`HashingWriter.write` waits."""
SYNC_EVERY_BYTES = 8 << 20
"""A durable writer's thread syncs the file whenever this many bytes were written since the last sync."""


class HashingWriter:
    """A new file at ``path`` written from ``write`` calls, hashed with sha256 on the way."""

    def __init__(
        self, path: Path, *, in_flight_bytes: int = IN_FLIGHT_BYTES, durable: bool = False,
        sync_every_bytes: int = SYNC_EVERY_BYTES,
    ) -> None:  # fmt: skip
        self.path = path
        self._durable, self._sync_every, self._unsynced = durable, sync_every_bytes, 0
        self.size = 0
        """Bytes written so far (handed over; on the file once :meth:`close` returns)."""
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._hash = hashlib.sha256()
        self._gathered: list[bytes] = []
        self._gathered_bytes = 0
        self._limit = in_flight_bytes
        self._behind = [0, 0]  # bytes handed to the hasher, to the writer, not yet consumed
        self._changed = threading.Condition()
        self._error: BaseException | None = None
        self._queues: tuple[queue.SimpleQueue[list[bytes] | None], ...] = (queue.SimpleQueue(), queue.SimpleQueue())
        consumers: tuple[Callable[[list[bytes]], object], ...] = (self._hash_in, self._write_out)
        self._threads = [
            threading.Thread(target=self._drain, args=(lane, consume), name=f"{path.name}-{role}", daemon=True)
            for lane, (consume, role) in enumerate(zip(consumers, ("hash", "write"), strict=True))
        ]
        for thread in self._threads:
            thread.start()

    def write(self, data: bytes) -> int:
        """Append ``data`` (not copied: it must not change afterwards, as ``bytes`` cannot)."""
        size = len(data)
        self._gathered.append(bytes(data))  # no copy for bytes, the type every caller passes
        self._gathered_bytes += size
        if self._gathered_bytes >= GATHER_BYTES or len(self._gathered) >= GATHER_PIECES:
            self._hand_gathered()
        self.size += size
        return size

    def close(self) -> tuple[int, str]:
        """Wait for both threads; returns (bytes written, sha256 hex), or raises the first error."""
        if self._fd >= 0 and self._error is None:
            self._hand_gathered()
        self._stop(sync=self._durable)
        if self._error is not None:
            raise self._error
        return self.size, self._hash.hexdigest()

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._stop()

    def _hand_gathered(self) -> None:
        if not self._gathered:
            return
        batch, size = self._gathered, self._gathered_bytes
        self._gathered, self._gathered_bytes = [], 0
        with self._changed:
            while self._error is None and 0 < max(self._behind) and max(self._behind) + size > self._limit:
                self._changed.wait()
            if self._error is not None:
                raise self._error
            self._behind = [behind + size for behind in self._behind]
        for lane in self._queues:
            lane.put(batch)

    def _drain(self, lane: int, consume: Callable[[list[bytes]], object]) -> None:
        while (batch := self._queues[lane].get()) is not None:
            failed: BaseException | None = None
            if self._error is None:
                try:
                    consume(batch)
                except BaseException as error:  # noqa: BLE001 - handed to the producer, raised there
                    failed = error
            with self._changed:
                self._error = self._error or failed
                self._behind[lane] -= sum(len(piece) for piece in batch)
                self._changed.notify_all()

    def _hash_in(self, batch: list[bytes]) -> None:
        for piece in batch:
            self._hash.update(piece)

    def _write_out(self, batch: list[bytes]) -> None:
        views = [memoryview(piece) for piece in batch if piece]
        while views:
            written = os.writev(self._fd, views)
            while views and written >= len(views[0]):
                written -= len(views.pop(0))
            if views:
                views[0] = views[0][written:]
        if self._durable:
            self._unsynced += sum(len(piece) for piece in batch)
            if self._unsynced >= self._sync_every:
                os.fdatasync(self._fd)
                self._unsynced = 0

    def _stop(self, *, sync: bool = False) -> None:
        """Stop the threads and close the file; with ``sync``, once both are done, sync what is not on disk yet."""
        if self._fd < 0:
            return
        for lane in self._queues:
            lane.put(None)
        for thread in self._threads:
            thread.join()
        try:
            if sync and self._error is None and self._unsynced:
                os.fdatasync(self._fd)
        except OSError as error:
            self._error = error
        finally:
            os.close(self._fd)
            self._fd = -1
