"""A throwaway CA with a server and a client certificate, made by the ``openssl`` command line.

Tests of TLS need a CA they control: the simulator's own tests and the sources'
(a server on ``localhost``: gRPC, an HTTPS source, versitygw) and the e2e tests on real pods (a server certificate for a
Service's DNS names, put in a ``kubernetes.io/tls`` Secret). One maker serves
both; only the server's names differ. The venv has no ``cryptography``, so the
``openssl`` CLI does it: short-lived (one day) P-256 keys, no network.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The server names of a certificate for a server on this machine.
LOCALHOST = ("DNS:localhost", "IP:127.0.0.1")


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server certificate for the given names and a client certificate, both signed by it."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(directory: Path, name: str, extensions: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip


def make_certificates(directory: Path, server_names: Sequence[str] = LOCALHOST) -> Certificates:
    """A CA in ``directory`` and certificates it signs: a server's for ``server_names``
    (subjectAltName entries, ``DNS:<name>`` or ``IP:<address>``) and a client's."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "1", "-subj", "/CN=lepton-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)  # fmt: skip
    _signed(directory, "server", f"subjectAltName={','.join(server_names)}\nextendedKeyUsage=serverAuth\n")
    _signed(directory, "client", "extendedKeyUsage=clientAuth\n")
    return Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                        directory / "client.pem", directory / "client.key")  # fmt: skip


def tls_secret(name: str, certificates: Certificates) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret (the layout cert-manager writes) of the server certificate, its key and the CA."""
    files = {"tls.crt": certificates.server_cert, "tls.key": certificates.server_key, "ca.crt": certificates.ca}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "kubernetes.io/tls",
            "data": {key: base64.b64encode(path.read_bytes()).decode() for key, path in files.items()}}  # fmt: skip
