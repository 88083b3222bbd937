"""https sources verified against a CA the test makes: with it they fetch, without it or with another CA they don't.

The server is ``http.server`` wrapped in ``ssl`` with a certificate for
127.0.0.1 signed by a test CA (``certificates.make_certificates``); nothing in
the system roots signed it, exactly the situation of a source behind a
corporate CA. The fetch path, the preparer and the stager are each run with
``LEPTON_SOURCE_CA_FILE`` as the operator sets it.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.certificates import Certificates, make_certificates
from lepton_workloads import shards
from lepton_workloads.source_tls import CA_FILE_ENV, Trust
from lepton_workloads.sources import SourceError, fetch
from sample_data import export_model, make_text, run_preparer, run_stager


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA, with the same subject as the right one: it signed nothing the server presents."""
    return make_certificates(tmp_path_factory.mktemp("wrong-ca")).ca


@pytest.fixture(scope="module")
def https_root(certificates: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An https server over a directory: (base URL, directory)."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    make_text(root / "text", 20)
    (root / "blob.bin").write_bytes(b"lepton" * 1000)
    export_model(root / "exports", "resnet")
    yield f"https://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def refused(uri: str, staging: Path, trust: Trust) -> SourceError:
    with pytest.raises(SourceError) as caught:
        fetch(uri, staging, source_root=staging, token=None, progress=lambda *_: None, trust=trust)
    return caught.value


def test_with_the_ca_a_single_object_and_a_directory_index_are_fetched(
    https_root: tuple[str, Path], certificates: Certificates, tmp_path: Path
) -> None:
    base, root = https_root
    trust = Trust.from_env({CA_FILE_ENV: str(certificates.ca)})
    single = fetch(f"{base}/blob.bin", tmp_path / "one", source_root=tmp_path, token=None, progress=lambda *_: None,
                   trust=trust)  # fmt: skip
    assert (single.root / "blob.bin").read_bytes() == (root / "blob.bin").read_bytes()
    assert single.sha256 == hashlib.sha256((root / "blob.bin").read_bytes()).hexdigest()
    tree = fetch(f"{base}/text/", tmp_path / "tree", source_root=tmp_path, token=None, progress=lambda *_: None,
                 trust=trust)  # fmt: skip
    fetched = sorted(p.relative_to(tree.root).as_posix() for p in tree.root.rglob("*") if p.is_file())
    assert fetched == sorted(p.relative_to(root / "text").as_posix() for p in (root / "text").rglob("*") if p.is_file())


def test_the_system_roots_alone_refuse_the_source_with_the_certificate_reason(
    https_root: tuple[str, Path], tmp_path: Path
) -> None:
    base, _ = https_root
    error = refused(f"{base}/blob.bin", tmp_path / "s", Trust.from_env({}))
    assert error.reason == "SourceTLSError"
    assert str(error).startswith(f"GET {base}/blob.bin: certificate verify failed: ")
    assert "the system roots only; a source signed by a private CA needs caBundle" in str(error)
    assert not any((tmp_path / "s").iterdir())  # nothing written


def test_a_wrong_ca_is_refused_and_named(https_root: tuple[str, Path], wrong_ca: Path, tmp_path: Path) -> None:
    base, _ = https_root
    error = refused(f"{base}/text/", tmp_path / "s", Trust(wrong_ca))
    assert error.reason == "SourceTLSError" and "certificate verify failed" in str(error)
    assert f"the system roots and the CA bundle {wrong_ca}" in str(error)


def test_an_unusable_bundle_is_a_tls_error_before_any_request(https_root: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = https_root
    (tmp_path / "ca.crt").write_text("not a certificate\n")
    error = refused(f"{base}/blob.bin", tmp_path / "s", Trust(tmp_path / "ca.crt"))
    assert error.reason == "SourceTLSError" and "is not a readable PEM certificate bundle" in str(error)
    missing = refused(f"{base}/blob.bin", tmp_path / "s", Trust(tmp_path / "absent.crt"))
    assert missing.reason == "SourceTLSError" and str(tmp_path / "absent.crt") in str(missing)


def test_the_bundle_is_added_to_the_system_roots_and_verification_stays_on(certificates: Certificates) -> None:
    system = Trust().context().cert_store_stats()["x509_ca"]
    context = Trust(certificates.ca).context()
    assert context.cert_store_stats()["x509_ca"] == system + 1  # added, not in their place
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_the_preparer_fetches_with_the_ca_and_a_wrong_ca_loses_nothing(
    https_root: tuple[str, Path], certificates: Certificates, wrong_ca: Path, tmp_path: Path
) -> None:
    base, _ = https_root
    source = {"LEPTON_SOURCE_URI": f"{base}/text/", "LEPTON_MODALITY": "text"}
    code, result, output = run_preparer(tmp_path, **source, LEPTON_SPEC_HASH="first", LEPTON_SOURCE_CA_FILE=str(certificates.ca))
    assert code == 0 and result["records"] == 20, result
    before = {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file() and ".progress" not in p.name}
    # A new spec (new hash) whose CA is wrong: refused, retried by the Job, and the prepared data is untouched.
    code, result, output = run_preparer(tmp_path, **source, LEPTON_SPEC_HASH="second", LEPTON_SOURCE_CA_FILE=str(wrong_ca))
    assert (code, result["ok"], result["reason"]) == (1, False, "SourceTLSError")
    assert "certificate verify failed" in result["message"] and str(wrong_ca) in result["message"]
    after = {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file() and ".progress" not in p.name}
    assert after == before
    manifest, _ = shards.read_manifest(output)
    assert manifest.extra["specHash"] == "first" and shards.verify(output, manifest) == []


def test_the_stager_stages_with_the_ca_and_says_why_without_it(
    https_root: tuple[str, Path], certificates: Certificates, tmp_path: Path
) -> None:
    base, _ = https_root
    ok = run_stager(tmp_path / "ok", f"{base}/exports/resnet/", LEPTON_SOURCE_CA_FILE=str(certificates.ca))
    assert ok.code == 0, ok.stderr
    assert (ok.repository / "served" / "1" / "model.pt").is_file()
    refused_run = run_stager(tmp_path / "refused", f"{base}/exports/resnet/")
    assert refused_run.code == 1
    assert refused_run.termination.startswith(f"SourceTLSError: GET {base}/exports/resnet/: certificate verify failed: ")
    assert not (refused_run.repository / "served" / "1" / "model.pt").exists()
