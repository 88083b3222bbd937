"""Shard writing, the manifest contract, verification and per-rank reading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_workloads import shards
from sync_recorder import record_syncs


def write_split(root: Path, split: str, count: int, **rollover: int) -> list[shards.ShardInfo]:
    writer = shards.ShardWriter(root, split, **rollover)
    for index in range(count):
        writer.add(f"{split}{index:06d}", {"txt": f"sample {index}".encode(), "cls": str(index % 3).encode()})
    return writer.close()


def test_round_trip_with_manifest_and_digest(tmp_path: Path) -> None:
    written = write_split(tmp_path, "train", 10, records_per_shard=4) + write_split(tmp_path, "validation", 3, records_per_shard=4)
    assert [s.records for s in written] == [4, 4, 2, 3]
    manifest = shards.Manifest(modality="text", source="https://example/x", shards=tuple(written))
    digest = shards.write_manifest(tmp_path, manifest)
    read, read_digest = shards.read_manifest(tmp_path)
    assert read == manifest and read_digest == digest and digest.startswith("sha256:")
    assert (read.records, read.bytes) == (13, sum(s.bytes for s in written))
    assert shards.verify(tmp_path, read) == []
    samples = list(shards.iter_samples(tmp_path, read.split("train")))
    assert [s["txt"] for s in samples] == [f"sample {i}".encode() for i in range(10)]
    assert samples[4] == {"__key__": b"train000004", "txt": b"sample 4", "cls": b"1"}


def test_size_rollover_and_sizes_are_the_files(tmp_path: Path) -> None:
    written = write_split(tmp_path, "train", 50, target_size_bytes=8192)
    assert len(written) > 1
    for shard in written:
        assert (tmp_path / shard.name).stat().st_size == shard.bytes


def test_corruption_is_detected(tmp_path: Path) -> None:
    manifest = shards.Manifest("text", "s3://b/x", tuple(write_split(tmp_path, "train", 5, records_per_shard=2)))
    with (tmp_path / manifest.shards[1].name).open("r+b") as handle:
        handle.seek(600)
        handle.write(b"X")
    (tmp_path / manifest.shards[2].name).unlink()
    assert shards.verify(tmp_path, manifest) == [
        f"{manifest.shards[1].name}: checksum mismatch",
        f"{manifest.shards[2].name}: missing",
    ]


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"schemaVersion": 2}')
    with pytest.raises(ValueError, match="schemaVersion"):
        shards.read_manifest(tmp_path)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 23), st.integers(1, 6))
def test_ranks_read_disjoint_shards_covering_the_split(tmp_path: Path, count: int, world: int) -> None:
    infos = tuple(shards.ShardInfo(f"shards/train-{i:06d}.tar", "train", 1, 1, "0") for i in range(count))
    manifest = shards.Manifest("image", "pvc://c/p", infos)
    parts = [shards.shards_for_rank(manifest, "train", rank, world) for rank in range(world)]
    assert sorted(s.name for part in parts for s in part) == sorted(s.name for s in infos)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_reader_handles_tars_from_other_writers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GNU and pax tars (long names, directories) go through tarfile from the first member the fast path
    does not handle; plain ustar never reaches tarfile."""
    import io
    import tarfile

    opened: list[int] = []
    tarfile_open = tarfile.open

    def counting_open(*args: Any, **kwargs: Any) -> tarfile.TarFile:
        opened.append(kwargs["fileobj"].tell() if "fileobj" in kwargs else 0)
        return tarfile_open(*args, **kwargs)

    long_key = "k" * 120  # longer than ustar's 100-character name field
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        path = tmp_path / f"shards/train-{fmt}.tar"
        path.parent.mkdir(exist_ok=True)
        with tarfile.open(path, "w", format=fmt) as tar:
            directory = tarfile.TarInfo("sub")
            directory.type = tarfile.DIRTYPE
            tar.addfile(directory)
            keys = ["a1", "a2"] if fmt == tarfile.USTAR_FORMAT else ["a1", long_key]
            for key in keys:
                for extension, data in (("txt", key.encode()), ("cls", b"7")):
                    member = tarfile.TarInfo(f"{key}.{extension}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
        info = shards.ShardInfo(f"shards/{path.name}", "train", 2, path.stat().st_size, "")
        opened.clear()
        with monkeypatch.context() as patch:
            patch.setattr(shards.tarfile, "open", counting_open)
            samples = list(shards.iter_samples(tmp_path, [info]))
        assert [s["txt"] for s in samples] == [k.encode() for k in keys], fmt
        assert all(s["cls"] == b"7" for s in samples)
        # GNU: its first header (not plain ustar) goes to tarfile; pax: its directory and first
        # sample are plain, tarfile takes over at the long name's pax header; ustar: never.
        assert opened == {tarfile.GNU_FORMAT: [0], tarfile.PAX_FORMAT: [3 * 512 + 2 * 512], tarfile.USTAR_FORMAT: []}[fmt]


def test_writer_bytes_are_what_tarfile_writes(tmp_path: Path) -> None:
    import io
    import tarfile

    fields = [("000001", {"png": b"\x89PNG" + b"x" * 700, "cls": b"3"}), ("000002", {"txt": b"", "json": b"{}" * 300}),
              ("d" * 60 + "/" + "k" * 60, {"txt": b"a name longer than ustar's 100 bytes"})]  # fmt: skip
    writer = shards.ShardWriter(tmp_path, "train", records_per_shard=10)
    for key, sample in fields:
        writer.add(key, sample)
    [shard] = writer.close()
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, sample in fields:
            for extension, data in sorted(sample.items()):
                member = tarfile.TarInfo(f"{key}.{extension}")
                member.size = len(data)
                member.mode = 0o444
                tar.addfile(member, io.BytesIO(data))
    assert (tmp_path / shard.name).read_bytes() == expected.getvalue()
    assert [sample for sample in shards.iter_samples(tmp_path, [shard])] == [
        {"__key__": key.encode(), **sample} for key, sample in fields
    ]  # the long name comes back whole from the ustar prefix field


def test_an_error_while_writing_stops_the_open_shard_and_lists_only_finished_ones(tmp_path: Path) -> None:
    import threading

    before = threading.active_count()
    with pytest.raises(ValueError, match="a bad record"), shards.ShardWriter(tmp_path, "train", records_per_shard=2) as writer:
        for index in range(3):
            writer.add(f"{index:06d}", {"txt": b"x" * 100_000})
        raise ValueError("a bad record")
    assert [s.records for s in writer.written] == [2]
    assert threading.active_count() == before


def test_a_header_with_any_byte_changed_is_not_taken_for_a_plain_one() -> None:
    """The fast path checks each header's checksum (as tarfile does); a changed byte sends it to tarfile."""
    header = shards.member_header("000000042.png", 123_456)
    assert shards._plain_header(header) == ("000000042.png", 123_456, True)
    for position in (*range(148), *range(156, 512)):  # outside the checksum field itself
        for delta in (1, 128, 255):
            changed = bytearray(header)
            changed[position] = (changed[position] + delta) % 256
            assert shards._plain_header(bytes(changed)) is None, (position, delta)


def test_the_manifest_is_published_only_after_every_shard_is_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a crash there is no manifest, or one whose shards are whole: syncs come before the rename, the rename is synced."""
    happened = record_syncs(monkeypatch, tmp_path)
    written = write_split(tmp_path, "train", 10, records_per_shard=4)
    shards.write_manifest(tmp_path, shards.Manifest(modality="text", source="https://example/x", shards=tuple(written)))
    published = happened.index(("rename", shards.MANIFEST))
    before = {name for _, name in happened[:published]}
    assert {s.name for s in written} | {shards.SHARD_DIR, f".{shards.MANIFEST}.tmp"} <= before
    assert happened[published + 1 :] == [("sync", ".")]
