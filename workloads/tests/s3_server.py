"""A real S3-compatible server for the workloads' tests: versitygw, built from the Go module proxy.

versitygw (``localcluster.build.ensure_versitygw``, cached like the control plane's
binaries; the first run compiles it) serves a local directory over the S3 API
with SigV4 authentication, so wrong keys are refused the way AWS refuses them.
One server per test session (the ``s3_server`` fixture in ``conftest.py``);
each test module makes its own bucket. ``versitygw(root, tls=...)`` serves
https instead, with a certificate from a test CA (``--cert``/``--key``).
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import urllib3
from minio import Minio

from localcluster.certificates import Certificates
from localcluster.build import ensure_versitygw
from localcluster.lepton import free_port
from sample_data import wait_until_serving

ACCESS, SECRET = "lepton-test", "lepton-test-secret-key"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint URL (https when it has ``ca``) and a client with the right keys."""

    endpoint: str
    ca: Path | None = None

    def client(self) -> Minio:
        secure = self.endpoint.startswith("https://")
        host = self.endpoint.removeprefix("https://" if secure else "http://")
        http = urllib3.PoolManager(ssl_context=ssl.create_default_context(cafile=self.ca)) if self.ca else None
        return Minio(host, access_key=ACCESS, secret_key=SECRET, secure=secure, region=REGION, http_client=http)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment the operator gives a pod for an s3:// source with a Secret (values inlined here)."""
        return {"LEPTON_S3_ENDPOINT": self.endpoint, "AWS_REGION": REGION,
                "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET, **extra}  # fmt: skip


@contextmanager
def versitygw(root: Path, tls: Certificates | None = None) -> Iterator[S3Server]:
    """versitygw over ``root/backend`` on a free port until the block ends; over https with ``tls``'s server certificate."""
    binary = ensure_versitygw()
    (root / "backend").mkdir(parents=True)
    port = free_port()
    log = root / "versitygw.log"
    certificate = ["--cert", str(tls.server_cert), "--key", str(tls.server_key)] if tls else []
    server = subprocess.Popen(
        [str(binary), "--access", ACCESS, "--secret", SECRET, "--port", f"127.0.0.1:{port}", *certificate,
         "posix", str(root / "backend")],
        stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip
    endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=tls.ca) if tls else None
    try:
        wait_until_serving(server, endpoint, 30, log=log, context=context)
        yield S3Server(endpoint, tls.ca if tls else None)
    finally:
        server.terminate()
        server.wait(10)
