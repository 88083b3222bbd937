"""The quickstart's sample data: generated, served over HTTP, prepared by the real preparer as multimodal records."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_workloads import demo_data, shards
from localcluster.lepton import free_port
from sample_data import run_preparer


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    labels = demo_data.write_records(tmp_path / "served", 30, seed=7)
    assert labels.count("cat") == labels.count("dog") == labels.count("bird") == 10
    httpd = demo_data.server(tmp_path / "served", free_port(), "127.0.0.1")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        thread.join()


def test_served_records_prepare_as_multimodal_groups_with_named_labels(served: str, tmp_path: Path) -> None:
    code, result, output = run_preparer(tmp_path, LEPTON_SOURCE_URI=served, LEPTON_MODALITY="multimodal",
                                        LEPTON_SHARD_COUNT="3", LEPTON_SPEC_HASH="demo")  # fmt: skip
    assert code == 0, result
    assert result["records"] == 30
    manifest, _ = shards.read_manifest(output)
    assert manifest.extra["labels"] == ["bird", "cat", "dog"]
    samples = list(shards.iter_samples(output, manifest.shards))
    assert len(samples) == 30
    for sample in samples:
        assert {"png", "cls", "wav", "txt"} <= set(sample)
        assert sample["png"].startswith(b"\x89PNG\r\n\x1a\n")
        with wave.open(io.BytesIO(sample["wav"])) as audio:
            assert audio.getnframes() == 800
        assert sample["cls"].decode() in sample["txt"].decode()


def test_the_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    demo_data.write_records(tmp_path / "a", 6, seed=3)
    demo_data.write_records(tmp_path / "b", 6, seed=3)
    demo_data.write_records(tmp_path / "c", 6, seed=4)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(files) == 24
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "00000.png").read_bytes() != (tmp_path / "c" / "00000.png").read_bytes()


def test_the_archive_holds_the_records_and_its_corrupted_copy_differs_only_in_checksum(tmp_path: Path) -> None:
    labels, digest = demo_data.write_dataset(tmp_path / "a", 9, seed=1)
    again, same = demo_data.write_dataset(tmp_path / "b", 9, seed=1)
    assert labels == again and digest == same  # deterministic: a test can compute the checksum
    archives = tmp_path / "a" / demo_data.ARCHIVES
    good, bad = (archives / demo_data.ARCHIVE).read_bytes(), (archives / demo_data.CORRUPTED).read_bytes()
    assert hashlib.sha256(good).hexdigest() == digest and (archives / f"{demo_data.ARCHIVE}.sha256").read_text().startswith(digest)
    assert len(bad) == len(good) and hashlib.sha256(bad).hexdigest() != digest
    with tarfile.open(archives / demo_data.ARCHIVE) as tar:
        assert sorted(tar.getnames()) == sorted(p.name for p in (tmp_path / "a" / demo_data.RECORDS).iterdir())


def test_a_corrupted_download_fails_the_checksum_and_the_good_one_prepares(tmp_path: Path) -> None:
    _, digest = demo_data.write_dataset(tmp_path / "served", 12, seed=2)
    httpd = demo_data.server(tmp_path / "served", free_port(), "127.0.0.1")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/{demo_data.ARCHIVES}/"
    try:
        code, result, _ = run_preparer(tmp_path / "bad", LEPTON_SOURCE_URI=base + demo_data.CORRUPTED,
                                       LEPTON_MODALITY="multimodal", LEPTON_VERIFY_SHA256=digest, LEPTON_SPEC_HASH="x")  # fmt: skip
        assert code != 0 and result["reason"] == "ChecksumMismatch", result
        code, result, _ = run_preparer(tmp_path / "good", LEPTON_SOURCE_URI=base + demo_data.ARCHIVE,
                                       LEPTON_MODALITY="multimodal", LEPTON_VERIFY_SHA256=digest, LEPTON_SPEC_HASH="x")  # fmt: skip
        assert code == 0 and result["records"] == 12, result
    finally:
        httpd.shutdown()
