"""s3:// over https against versitygw serving TLS with a certificate from a test CA.

versitygw (built by the harness, ``s3_server.versitygw``) takes the server
certificate and key (``--cert``/``--key``); the preparer and the stager run as
the operator's pods do, with the endpoint, the keys and ``LEPTON_SOURCE_CA_FILE``
in their environment. With the CA both fetch through the MinIO client; with a
wrong CA or none, both stop on ``SourceTLSError`` and what was already prepared
stays as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.certificates import Certificates, make_certificates
from lepton_workloads import shards
from s3_server import S3Server, versitygw
from sample_data import export_model, make_text, run_preparer, run_stager

BUCKET = "secure"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_s3(certificates: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """versitygw over https with text records under ``text/`` and an export under ``exports/resnet/``."""
    with versitygw(tmp_path_factory.mktemp("s3-tls"), tls=certificates) as server:
        assert server.endpoint.startswith("https://")
        client = server.client()
        client.make_bucket(BUCKET)
        source = tmp_path_factory.mktemp("s3-tls-source")
        make_text(source / "text", 25)
        export = export_model(source / "exports", "resnet")
        for path in sorted(source.rglob("*")):
            if path.is_file():
                client.fput_object(BUCKET, path.relative_to(source).as_posix(), str(path))
        assert export.is_dir()
        yield server


def files(output: Path) -> dict[Path, bytes]:
    return {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file() and ".progress" not in p.name}


def test_the_preparer_fetches_over_https_with_the_ca_and_a_wrong_ca_loses_nothing(
    tls_s3: S3Server, certificates: Certificates, tmp_path: Path
) -> None:
    source = {"LEPTON_SOURCE_URI": f"s3://{BUCKET}/text/", "LEPTON_MODALITY": "text"}
    code, result, output = run_preparer(
        tmp_path, **tls_s3.env(**source, LEPTON_SPEC_HASH="first", LEPTON_SOURCE_CA_FILE=str(certificates.ca))
    )
    assert code == 0 and result["records"] == 25, result
    before = files(output)
    wrong = make_certificates(tmp_path / "wrong").ca
    code, result, output = run_preparer(
        tmp_path, **tls_s3.env(**source, LEPTON_SPEC_HASH="second", LEPTON_SOURCE_CA_FILE=str(wrong))
    )
    assert (code, result["ok"], result["reason"]) == (1, False, "SourceTLSError"), result
    assert result["message"].startswith(f"s3://{BUCKET}/text/: certificate verify failed: ")
    assert f"the CA bundle {wrong}" in result["message"]
    assert files(output) == before
    manifest, _ = shards.read_manifest(output)
    assert manifest.extra["specHash"] == "first" and shards.verify(output, manifest) == []


def test_the_stager_stages_over_https_with_the_ca_and_says_why_without_it(
    tls_s3: S3Server, certificates: Certificates, tmp_path: Path
) -> None:
    uri = f"s3://{BUCKET}/exports/resnet/"
    ok = run_stager(tmp_path / "ok", uri, **tls_s3.env(LEPTON_SOURCE_CA_FILE=str(certificates.ca)))
    assert ok.code == 0, ok.stderr
    assert (ok.repository / "served" / "1" / "model.pt").is_file()
    refused = run_stager(tmp_path / "refused", uri, **tls_s3.env())
    assert refused.code == 1
    assert refused.termination.startswith(f"SourceTLSError: {uri}: certificate verify failed: "), refused.termination
    assert "the system roots only" in refused.termination
    assert not (refused.repository / "served" / "1" / "model.pt").exists()
