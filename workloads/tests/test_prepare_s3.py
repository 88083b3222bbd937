"""The preparer against a real S3-compatible server (versitygw, the ``s3_server`` fixture).

The test uploads generated data with the MinIO SDK, then runs
``python -m lepton_workloads.prepare`` as a subprocess with the environment the
operator's Job sets (endpoint, region, keys from the Secret).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from lepton_workloads import prepare, shards
from localcluster.lepton import free_port
from s3_server import S3Server
from sample_data import make_images, make_text, run_preparer

BUCKET = "datasets"


@pytest.fixture(scope="module")
def s3(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[S3Server, Path]:
    """The server with generated data uploaded to its own bucket: (server, source dir)."""
    client = s3_server.client()
    client.make_bucket(BUCKET)
    source = tmp_path_factory.mktemp("s3-source")
    make_images(source / "images", 12)
    make_text(source / "text", 30)
    for path in sorted((source / "images").rglob("*")):
        if path.is_file():
            client.fput_object(BUCKET, f"images/{path.relative_to(source / 'images').as_posix()}", str(path))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(source / "text", arcname="text")
    (source / "text.tar.gz").write_bytes(archive.getvalue())
    client.fput_object(BUCKET, "text.tar.gz", str(source / "text.tar.gz"))
    return s3_server, source


def s3_env(server: S3Server, uri: str, modality: str, **extra: str) -> dict[str, str]:
    return server.env(LEPTON_SOURCE_URI=uri, LEPTON_MODALITY=modality, **extra)


def test_image_prefix_from_s3(s3: tuple[S3Server, Path], tmp_path: Path) -> None:
    server, source = s3
    code, result, output = run_preparer(tmp_path, **s3_env(server, f"s3://{BUCKET}/images/", "image"))
    assert code == 0, result
    manifest, digest = shards.read_manifest(output)
    assert result["records"] == 12 and result["digest"] == digest and shards.verify(output, manifest) == []
    samples = list(shards.iter_samples(output, manifest.shards))
    for sample in samples:
        index = int(sample["__key__"])
        assert sample["png"] == (source / "images" / "img" / f"{index:04d}.png").read_bytes()
        assert sample["cls"] == str(index % 3).encode()
    assert result["sourceBytes"] == sum(p.stat().st_size for p in (source / "images").rglob("*") if p.is_file())


def test_archive_object_with_checksum_from_s3(s3: tuple[S3Server, Path], tmp_path: Path) -> None:
    server, source = s3
    expected = hashlib.sha256((source / "text.tar.gz").read_bytes()).hexdigest()
    env = s3_env(server, f"s3://{BUCKET}/text.tar.gz", "text", LEPTON_VERIFY_SHA256=expected)
    code, result, output = run_preparer(tmp_path, **env)
    assert code == 0, result
    assert result["sourceSha256"] == expected and result["records"] == 30
    manifest, _ = shards.read_manifest(output)
    ids = sorted(json.loads(s["json"])["id"] for s in shards.iter_samples(output, manifest.shards))
    assert ids == list(range(30))


def test_wrong_keys_are_access_denied(s3: tuple[S3Server, Path], tmp_path: Path) -> None:
    server, _ = s3
    env = s3_env(server, f"s3://{BUCKET}/text.tar.gz", "text", AWS_SECRET_ACCESS_KEY="wrong-secret")
    code, result, _ = run_preparer(tmp_path, **env)
    assert code == prepare.EXIT_RETRYABLE and result["reason"] == "AccessDenied", result


def test_missing_object_is_unreachable(s3: tuple[S3Server, Path], tmp_path: Path) -> None:
    server, _ = s3
    code, result, _ = run_preparer(tmp_path, **s3_env(server, f"s3://{BUCKET}/nothing.tar", "text"))
    assert code == prepare.EXIT_RETRYABLE and result["reason"] == "SourceUnreachable"
    assert "NoSuchKey" in result["message"]


def test_an_endpoint_that_refuses_is_unreachable_and_the_message_says_which_and_why(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server = S3Server(endpoint)
    code, result, _ = run_preparer(tmp_path, **s3_env(server, f"s3://{BUCKET}/text.tar.gz", "text"))
    assert code == prepare.EXIT_RETRYABLE and result["reason"] == "SourceUnreachable", result
    assert result["message"] == f"s3://{BUCKET}/text.tar.gz: the endpoint {endpoint} failed: Connection refused"


def test_wrong_checksum_from_s3_fails(s3: tuple[S3Server, Path], tmp_path: Path) -> None:
    server, _ = s3
    env = s3_env(server, f"s3://{BUCKET}/text.tar.gz", "text", LEPTON_VERIFY_SHA256="f" * 64)
    code, result, _ = run_preparer(tmp_path, **env)
    assert code == prepare.EXIT_PERMANENT and result["reason"] == "ChecksumMismatch"
