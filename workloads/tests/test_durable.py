"""The one write-sync-rename helper: the order of its syncs and rename, and what a failure leaves."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lepton_workloads import durable
from sync_recorder import record_syncs


def test_the_file_is_synced_before_the_rename_and_the_rename_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    happened = record_syncs(monkeypatch, tmp_path)
    durable.write_text(tmp_path / "config.pbtxt", "name: 'x'\n")
    assert happened == [("sync", ".config.pbtxt.tmp"), ("rename", "config.pbtxt"), ("sync", ".")]
    assert (tmp_path / "config.pbtxt").read_text() == "name: 'x'\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.pbtxt"]


def test_the_writer_gets_a_temporary_path_in_the_targets_directory(tmp_path: Path) -> None:
    seen: list[Path] = []

    def write(temporary: Path) -> None:
        seen.append(temporary)
        temporary.write_bytes(b"model")

    durable.replace(tmp_path / "model.pt", write)
    assert seen == [tmp_path / ".model.pt.tmp"] and durable.temporary_of(tmp_path / "model.pt") == seen[0]
    assert (tmp_path / "model.pt").read_bytes() == b"model"


def test_a_writer_failing_midway_leaves_the_previous_file_and_no_temporary(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    target = tmp_path / "checkpoint.pt"
    durable.write_text(target, "previous")
    happened = record_syncs(monkeypatch, tmp_path)

    def write(temporary: Path) -> None:
        temporary.write_text("half of the ne")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        durable.replace(target, write)
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert happened == []  # nothing was renamed


def test_a_failed_sync_renames_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "manifest.json"
    durable.write_text(target, "previous")

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="Input/output"):
        durable.write_text(target, "new")
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_an_interrupt_midway_also_removes_the_temporary(tmp_path: Path) -> None:
    def write(temporary: Path) -> None:
        temporary.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        durable.replace(tmp_path / "progress.json", write)
    assert list(tmp_path.iterdir()) == []


def test_new_directories_are_synced_into_their_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "out").mkdir()
    happened = record_syncs(monkeypatch, tmp_path)
    durable.make_directories(tmp_path / "out" / "model" / "1")
    assert (tmp_path / "out" / "model" / "1").is_dir()
    assert happened == [("sync", "out"), ("sync", "out/model")]
    happened.clear()
    durable.make_directories(tmp_path / "out" / "model" / "1")  # already there: nothing to do
    assert happened == []
