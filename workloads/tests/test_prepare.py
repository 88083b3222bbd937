"""The preparer end to end, as real processes against a real HTTP server.

A ``python -m http.server`` subprocess serves generated image+label, wav+transcript
and jsonl data as a directory index; the preparer runs as ``python -m
lepton_workloads.prepare`` in a subprocess with the environment the operator's
Job sets. A small threaded server that lies about ``Content-Length`` stands in
for a connection cut mid-download.
"""

from __future__ import annotations

import errno
import hashlib
import io
import http.server
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_workloads import prepare, shards, sources
from localcluster.lepton import free_port
from sample_data import make_audio, make_images, make_text, run_preparer, wait_until_serving


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``python -m http.server`` over a directory of generated datasets: (base URL, directory)."""
    root = tmp_path_factory.mktemp("served")
    make_images(root / "images", 20)
    make_audio(root / "audio", 10)
    make_text(root / "text", 50)
    with tarfile.open(root / "text.tar.gz", "w:gz") as tar:
        tar.add(root / "text", arcname="text")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/"
    wait_until_serving(server, base, 10)
    yield base, root
    server.terminate()
    server.wait(10)


def test_image_directory_over_http(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    code, result, output = run_preparer(
        tmp_path, LEPTON_SOURCE_URI=base + "images/", LEPTON_MODALITY="image", LEPTON_SHARD_COUNT="4",
        LEPTON_SPLIT_TRAIN="0.75", LEPTON_SPLIT_SEED="7", LEPTON_SPEC_HASH="abc",
    )  # fmt: skip
    assert code == 0, result
    manifest, digest = shards.read_manifest(output)
    assert result["ok"] is True and result["schema"] == prepare.RESULT_SCHEMA
    assert (result["records"], result["shards"], result["digest"]) == (20, len(manifest.shards), digest)
    assert result["bytes"] == manifest.bytes == sum((output / s.name).stat().st_size for s in manifest.shards)
    assert result["splits"]["train"]["records"] == 15 and result["splits"]["validation"]["records"] == 5
    assert shards.verify(output, manifest) == []
    assert result["sourceBytes"] == sum(p.stat().st_size for p in (root / "images").rglob("*") if p.is_file())
    samples = list(shards.iter_samples(output, manifest.shards))
    labels = (root / "images" / "labels.csv").read_text().splitlines()[1:]
    for sample in samples:  # every image arrives intact with its own label
        index = int(sample["__key__"])
        assert sample["png"] == (root / "images" / "img" / f"{index:04d}.png").read_bytes()
        assert sample["cls"].decode() == labels[index].split(",")[1]
    assert sorted(int(s["__key__"]) for s in samples) == list(range(20))
    assert not (output / prepare.STAGING_DIR).exists()
    assert json.loads((output / prepare.PROGRESS_FILE).read_text())["stage"] == "done"


def test_split_is_seeded_and_repeatable() -> None:
    first = prepare.assign_splits(100, 0.8, 0.1, seed=3)
    assert first == prepare.assign_splits(100, 0.8, 0.1, seed=3)
    assert first != prepare.assign_splits(100, 0.8, 0.1, seed=4)
    assert (len(first["train"]), len(first["validation"])) == (80, 10)
    assert not set(first["train"]) & set(first["validation"])
    assert prepare.assign_splits(10, 1.0, None, 0).keys() == {"train"}


def test_audio_with_sidecar_transcripts(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    code, result, output = run_preparer(tmp_path, LEPTON_SOURCE_URI=base + "audio/", LEPTON_MODALITY="audio")
    assert code == 0, result
    manifest, _ = shards.read_manifest(output)
    samples = {int(s["__key__"]): s for s in shards.iter_samples(output, manifest.shards)}
    assert len(samples) == result["records"] == 10
    for index, sample in samples.items():
        assert sample["txt"] == f"utterance number {index}".encode()
        assert sample["wav"] == (root / "audio" / f"utt{index:03d}.wav").read_bytes()


def test_text_archive_with_expected_checksum(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    expected = hashlib.sha256((root / "text.tar.gz").read_bytes()).hexdigest()
    code, result, output = run_preparer(
        tmp_path, LEPTON_SOURCE_URI=base + "text.tar.gz", LEPTON_MODALITY="text", LEPTON_VERIFY_SHA256=expected,
        LEPTON_SHARD_TARGET_BYTES="2048",
    )  # fmt: skip
    assert code == 0, result
    assert result["sourceSha256"] == expected and result["records"] == 50 and result["shards"] >= 2
    manifest, _ = shards.read_manifest(output)
    texts = sorted(json.loads(s["json"])["id"] for s in shards.iter_samples(output, manifest.shards))
    assert texts == list(range(50))


def test_wrong_checksum_fails_with_reason(served: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = served
    code, result, output = run_preparer(
        tmp_path, LEPTON_SOURCE_URI=base + "text.tar.gz", LEPTON_MODALITY="text", LEPTON_VERIFY_SHA256="0" * 64
    )
    assert code == prepare.EXIT_PERMANENT
    assert result["ok"] is False and result["reason"] == "ChecksumMismatch" and "0" * 64 in result["message"]
    assert not (output / shards.MANIFEST).exists()


def test_unreachable_source_is_retryable(tmp_path: Path) -> None:
    code, result, _ = run_preparer(
        tmp_path, LEPTON_SOURCE_URI=f"http://127.0.0.1:{free_port()}/data/", LEPTON_MODALITY="text"
    )
    assert code == prepare.EXIT_RETRYABLE
    assert result["reason"] == "SourceUnreachable" and "127.0.0.1" in result["message"]


def test_missing_file_is_unreachable(served: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = served
    code, result, _ = run_preparer(tmp_path, LEPTON_SOURCE_URI=base + "nothing.tar", LEPTON_MODALITY="text")
    assert (code, result["reason"]) == (prepare.EXIT_RETRYABLE, "SourceUnreachable")
    assert "HTTP 404" in result["message"]


class _Lying(http.server.BaseHTTPRequestHandler):
    """Promises more bytes than it sends, then closes: a download cut off mid-way."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b'{"id": 1}\n' * 100)
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


def test_truncated_download_fails_with_reason(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Lying)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/data.jsonl"
        code, result, output = run_preparer(tmp_path, LEPTON_SOURCE_URI=url, LEPTON_MODALITY="text")
    finally:
        server.shutdown()
    assert code == prepare.EXIT_RETRYABLE and result["reason"] == "SourceTruncated", result
    assert not (output / shards.MANIFEST).exists()


def test_corrupted_image_fails_with_reason(tmp_path: Path) -> None:
    source = tmp_path / "claim"
    make_images(source / "set", 3)
    (source / "set" / "img" / "0001.png").write_bytes(b"not a png at all")
    code, result, _ = run_preparer(
        tmp_path, LEPTON_SOURCE_URI="pvc://raw/set", LEPTON_SOURCE_ROOT=str(source), LEPTON_MODALITY="image"
    )
    assert code == prepare.EXIT_PERMANENT and result["reason"] == "InvalidData" and "0001.png" in result["message"]


def test_empty_source_fails(tmp_path: Path) -> None:
    (tmp_path / "claim" / "empty").mkdir(parents=True)
    code, result, _ = run_preparer(
        tmp_path, LEPTON_SOURCE_URI="pvc://raw/empty", LEPTON_SOURCE_ROOT=str(tmp_path / "claim"), LEPTON_MODALITY="text"
    )
    assert (code, result["reason"]) == (prepare.EXIT_PERMANENT, "EmptyDataset")


def test_tabular_csv_from_mounted_claim_and_reuse(tmp_path: Path) -> None:
    source = tmp_path / "claim" / "tables"
    source.mkdir(parents=True)
    (source / "rows.csv").write_text("a,b\n" + "".join(f"{i},{i * i}\n" for i in range(30)))
    env = {"LEPTON_SOURCE_URI": "pvc://raw/tables/rows.csv", "LEPTON_SOURCE_ROOT": str(tmp_path / "claim"),
           "LEPTON_MODALITY": "tabular", "LEPTON_SPEC_HASH": "h1", "LEPTON_SPLIT_TRAIN": "0.5"}  # fmt: skip
    code, first, output = run_preparer(tmp_path, **env)
    assert code == 0 and first["records"] == 30 and first["splits"]["validation"]["records"] == 15
    manifest, _ = shards.read_manifest(output)
    rows = [json.loads(s["json"]) for s in shards.iter_samples(output, manifest.shards)]
    assert sorted(int(r["a"]) for r in rows) == list(range(30)) and all(int(r["b"]) == int(r["a"]) ** 2 for r in rows)
    stamp = (output / shards.MANIFEST).stat().st_mtime_ns
    code, second, _ = run_preparer(tmp_path, **env)  # a retried pod of the same spec: nothing prepared twice
    assert code == 0 and second["digest"] == first["digest"]
    assert (output / shards.MANIFEST).stat().st_mtime_ns == stamp


def test_tabular_parquet_keeps_column_types_and_a_corrupt_file_is_invalid_data(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "claim" / "tables"
    source.mkdir(parents=True)
    table = pa.table({"id": list(range(25)), "score": [i / 4 for i in range(25)],
                      "label": [f"class-{i % 3}" for i in range(25)], "ok": [i % 2 == 0 for i in range(25)]})  # fmt: skip
    pq.write_table(table, source / "rows.parquet", row_group_size=10)  # three row groups, read batch by batch
    env = {"LEPTON_SOURCE_URI": "pvc://raw/tables", "LEPTON_SOURCE_ROOT": str(tmp_path / "claim"),
           "LEPTON_MODALITY": "tabular", "LEPTON_SPEC_HASH": "p1"}  # fmt: skip
    code, result, output = run_preparer(tmp_path, **env)
    assert code == 0 and result["records"] == 25
    manifest, _ = shards.read_manifest(output)
    rows = sorted((json.loads(s["json"]) for s in shards.iter_samples(output, manifest.shards)), key=lambda r: r["id"])
    assert rows == table.to_pylist()  # ints, floats, strings and bools survive as JSON types

    (source / "rows.parquet").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    code, result, _ = run_preparer(tmp_path, **{**env, "LEPTON_SPEC_HASH": "p2"})
    assert (code, result["reason"]) == (prepare.EXIT_PERMANENT, "InvalidData")
    assert "rows.parquet" in result["message"]


def test_a_checksum_is_checked_before_the_archive_is_unpacked(tmp_path: Path) -> None:
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(__file__, arcname="a.txt")
    staging = tmp_path / "staging"
    with pytest.raises(sources.SourceError) as raised:
        sources.fetch(str(archive), staging, source_root=tmp_path, token=None, progress=lambda d, t: None, sha256="0" * 64)
    assert raised.value.reason == "ChecksumMismatch"
    assert not (staging / "a.txt").exists()  # never unpacked
    with pytest.raises(sources.SourceError) as raised:
        sources.fetch(str(tmp_path), staging, source_root=tmp_path, token=None, progress=lambda d, t: None, sha256="0" * 64)
    assert raised.value.reason == "ChecksumNotApplicable"


def test_archives_unpack_without_tarfile_filters_and_refuse_members_outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian bookworm's Python 3.11.2 has no ``filter=``: the unpacking must not need it."""
    original = tarfile.TarFile.extractall

    def without_filters(self: tarfile.TarFile, path: Any = ".", members: Any = None, *, numeric_owner: bool = False,
                        **extra: Any) -> None:  # fmt: skip
        assert not extra, f"extractall got {sorted(extra)}, which Python 3.11.2 refuses"
        original(self, path, members, numeric_owner=numeric_owner)

    monkeypatch.setattr(tarfile.TarFile, "extractall", without_filters)
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tar:
        tar.add(__file__, arcname="dir/a.txt")
    fetched = sources.fetch(str(good), tmp_path / "s1", source_root=tmp_path, token=None, progress=lambda d, t: None)
    assert (fetched.root / "dir" / "a.txt").read_bytes() == Path(__file__).read_bytes()
    for name, kind in (("../escape.txt", tarfile.REGTYPE), ("/abs.txt", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)):
        bad = tmp_path / "bad.tar"
        with tarfile.open(bad, "w") as tar:
            member = tarfile.TarInfo(name)
            member.type, member.linkname = kind, "/etc/passwd"
            tar.addfile(member, io.BytesIO(b""))
        with pytest.raises(sources.SourceError) as raised:
            sources.fetch(str(bad), tmp_path / "s2", source_root=tmp_path, token=None, progress=lambda d, t: None)
        assert raised.value.reason == "InvalidData" and name in str(raised.value)
    assert not (tmp_path / "escape.txt").exists()


def test_records_are_read_in_order_with_the_next_files_asked_for_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lepton_workloads import prepare_layouts
    from lepton_workloads.prepare_layouts import LayoutError, OnDisk, Record, read_ahead

    advised: list[str] = []
    fadvise = os.posix_fadvise

    def recording(descriptor: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED
        advised.append(Path(os.readlink(f"/proc/self/fd/{descriptor}")).name)
        fadvise(descriptor, offset, length, advice)

    monkeypatch.setattr(prepare_layouts.os, "posix_fadvise", recording)
    loaded_with: dict[int, list[str]] = {}

    def on_disk(index: int) -> Record:
        path = tmp_path / f"{index}.bin"
        path.write_bytes(str(index).encode())

        def load() -> dict[str, bytes]:
            loaded_with[index] = list(advised)
            if index == 8:
                raise LayoutError("InvalidData", "record 8 is bad")
            return {"bin": path.read_bytes()}

        return OnDisk((path,), load)

    def in_memory(index: int) -> Record:
        return lambda: {"bin": str(index).encode()}

    items = [in_memory(index) if index % 3 == 0 else on_disk(index) for index in range(10)]
    taken = []
    with pytest.raises(LayoutError, match="record 8"):
        for sample in read_ahead(items, records=2):
            taken.append(sample["bin"])
    assert taken == [str(index).encode() for index in range(8)]  # in order, up to the bad record
    # When record 1 loads, the on-disk records among 1..3 were advised: 1 and 2 (3 is in memory), not 4.
    assert loaded_with[1] == ["1.bin", "2.bin"]
    assert loaded_with[4] == ["1.bin", "2.bin", "4.bin", "5.bin"]



def test_a_claim_too_small_for_the_shards_fails_with_the_sizes_and_leaves_nothing_half_made(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = served
    source = sum(p.stat().st_size for p in (root / "images").rglob("*") if p.is_file())
    code, result, output = run_preparer(
        tmp_path, LEPTON_SOURCE_URI=base + "images/", LEPTON_MODALITY="image", LEPTON_SHARD_COUNT="4",
        LEPTON_CLAIM_BYTES=str(source + source // 2),  # the staged source fits, its shards do not
    )  # fmt: skip
    assert code == prepare.EXIT_PERMANENT
    assert (result["ok"], result["reason"]) == (False, "InsufficientStorage"), result
    assert result["message"].startswith("the claim holds ") and "raise spec.storage.size" in result["message"]
    assert not (output / shards.MANIFEST).exists()  # nothing published
    assert not (output / shards.SHARD_DIR).exists() and not (output / prepare.STAGING_DIR).exists()
    code, result, output = run_preparer(
        tmp_path, LEPTON_SOURCE_URI=base + "images/", LEPTON_MODALITY="image", LEPTON_SHARD_COUNT="4",
        LEPTON_CLAIM_BYTES=str(1 << 20),
    )  # fmt: skip
    assert code == 0 and result["records"] == 20, result  # a claim that holds it prepares as before
    assert result["bytes"] + source <= 1 << 20


def test_a_volume_that_runs_out_midway_is_the_same_failure(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = served
    real_add = shards.ShardWriter.add
    calls = []

    def add_until_full(self: shards.ShardWriter, key: str, sample: Any) -> None:
        calls.append(key)
        if len(calls) > 5:  # the volume's own quota, as a cloud disk enforces it
            raise OSError(errno.ENOSPC, "No space left on device", str(self.root / "shards"))
        real_add(self, key, sample)

    monkeypatch.setattr(shards.ShardWriter, "add", add_until_full)
    output = tmp_path / "out"
    args = prepare.parse_args(["--source", base + "images/", "--modality", "image", "--shard-count", "4",
                               "--output", str(output), "--result", str(tmp_path / "result")])  # fmt: skip
    code = prepare._run(args, prepare.Reporter(output))
    result = json.loads((tmp_path / "result").read_text())
    assert code == prepare.EXIT_PERMANENT and result["reason"] == "InsufficientStorage", result
    assert "No space left on device" in result["message"]
    assert not (output / shards.MANIFEST).exists() and not (output / shards.SHARD_DIR).exists()
