"""The hashing writer: the digest and the file are exactly the bytes handed in, written off the caller's thread."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from lepton_workloads import hashing_writer
from lepton_workloads.hashing_writer import HashingWriter


def pieces() -> list[bytes]:
    """Small and large pieces, interleaved: batches of several pieces, and pieces larger than a batch."""
    small = [bytes([index]) * size for index, size in enumerate((512, 1, 700, 0, 65535))]
    large = [os.urandom(size) for size in (65536, 3 << 20, 100_000)]
    return [piece for pair in zip(small, large + [b""] * 2, strict=True) for piece in pair] + small


def test_file_and_digest_are_the_bytes_in_order(tmp_path: Path) -> None:
    data = pieces()
    with HashingWriter(tmp_path / "out", in_flight_bytes=1 << 20) as out:  # under one piece: waits often
        for piece in data:
            out.write(piece)
        size, sha256 = out.close()
    expected = b"".join(data)
    assert (tmp_path / "out").read_bytes() == expected
    assert (size, sha256) == (len(expected), hashlib.sha256(expected).hexdigest())
    assert out.close() == (size, sha256)  # idempotent


def test_a_failing_write_is_raised_to_the_caller_who_never_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, buffers: list[memoryview]) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hashing_writer.os, "writev", full)
    out = HashingWriter(tmp_path / "out", in_flight_bytes=1 << 20)
    with pytest.raises(OSError, match="No space left"):
        for _ in range(64):  # far past the in-flight bound: a dead writer thread must not stall the caller
            out.write(bytes(1 << 20))
        out.close()
    with pytest.raises(OSError, match="No space left"):
        out.close()


def test_writing_happens_on_another_thread_and_in_flight_bytes_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing = threading.Event()
    release = threading.Event()
    writev = os.writev

    def stalled(fd: int, buffers: list[memoryview]) -> int:
        writing.set()
        assert release.wait(30), "never released"
        return writev(fd, buffers)

    monkeypatch.setattr(hashing_writer.os, "writev", stalled)
    out = HashingWriter(tmp_path / "out", in_flight_bytes=2 << 20)
    out.write(bytes(1 << 20))  # returns while the file write is stalled: it is not on this thread
    assert writing.wait(30)
    producer = threading.Thread(target=lambda: [out.write(bytes(1 << 20)) for _ in range(3)])
    producer.start()
    producer.join(0.2)
    assert producer.is_alive(), "handed over more than in_flight_bytes while the writer was stalled"
    release.set()
    producer.join(30)
    assert out.close() == (4 << 20, hashlib.sha256(bytes(4 << 20)).hexdigest())
    assert (tmp_path / "out").stat().st_size == 4 << 20


def test_leaving_the_block_on_an_error_stops_the_threads(tmp_path: Path) -> None:
    before = threading.active_count()
    with pytest.raises(RuntimeError), HashingWriter(tmp_path / "out") as out:
        out.write(bytes(1 << 20))
        raise RuntimeError("the producer failed")
    assert threading.active_count() == before


def test_short_writes_are_resumed_where_they_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writev = os.writev

    def short(fd: int, buffers: list[memoryview]) -> int:
        return writev(fd, [buffers[0][:1000]])  # at most 1000 bytes a call, often mid-piece

    monkeypatch.setattr(hashing_writer.os, "writev", short)
    data = pieces()
    with HashingWriter(tmp_path / "out") as out:
        for piece in data:
            out.write(piece)
        out.close()
    assert (tmp_path / "out").read_bytes() == b"".join(data)


def test_a_durable_writer_syncs_as_it_goes_and_the_tail_at_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk writes back while the producer goes on; nothing written is left unsynced once close returns."""
    synced_at: list[int] = []  # the file's size at each sync
    monkeypatch.setattr(hashing_writer.os, "fdatasync", lambda fd: synced_at.append(os.fstat(fd).st_size))
    data = pieces() * 4
    with HashingWriter(tmp_path / "out", durable=True, sync_every_bytes=1 << 20) as out:
        for piece in data:
            out.write(piece)
        size, _ = out.close()
    assert synced_at[-1] == size == sum(map(len, data))
    assert len(synced_at) > 4 and synced_at == sorted(synced_at)
    with HashingWriter(tmp_path / "plain") as out:  # a plain writer (a download to check) leaves it to the kernel
        out.write(bytes(3 << 20))
        out.close()
    assert len(synced_at) == len(set(synced_at)) and synced_at[-1] == size


def test_a_failing_sync_is_raised_by_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(hashing_writer.os, "fdatasync", failing)
    with pytest.raises(OSError, match="Input/output error"), HashingWriter(tmp_path / "out", durable=True) as out:
        out.write(b"x" * 100)
        out.close()
