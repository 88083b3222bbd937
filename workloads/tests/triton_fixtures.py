"""Helpers for the Triton simulator's tests: a tiny exported model, and a CA with server and client certificates.

Everything is made by the test itself: the model by ``export.write`` (as the
trainer exports), the certificates by the ``openssl`` command line (the venv has
no ``cryptography``), short-lived EC keys, no network.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lepton_workloads import export

MODEL = "double"


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


def write_doubler(root: Path, export_format: str = "torchscript") -> Path:
    """``double`` (``INPUT__0`` FP32 ``[-1, 4]`` -> ``OUTPUT__0`` = 2x+1) in a model repository at ``root``."""
    export.write(Doubler(), (4,), root, MODEL, max_batch_size=8, export_format=export_format)
    return root


def expected(batch: np.ndarray) -> np.ndarray:
    return batch * 2 + 1


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server certificate for ``localhost``/``127.0.0.1`` and a client certificate, both signed by it."""

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


def make_certificates(directory: Path) -> Certificates:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "1", "-subj", "/CN=lepton-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)  # fmt: skip
    _signed(directory, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed(directory, "client", "extendedKeyUsage=clientAuth\n")
    return Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                        directory / "client.pem", directory / "client.key")  # fmt: skip
