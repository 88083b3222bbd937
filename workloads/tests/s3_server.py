"""A real S3-compatible server for the workloads' tests: versitygw, built from the Go module proxy.

versitygw (``localcluster.s3.Versitygw``; the binary is cached like the control plane's,
the first run compiles it) serves a local directory over the S3 API
with SigV4 authentication, so wrong keys are refused the way AWS refuses them.
One server per test session (the ``s3_server`` fixture in ``conftest.py``);
each test module makes its own bucket. ``versitygw(root, tls=...)`` serves
https instead, with a certificate from a test CA (``--cert``/``--key``).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import urllib3
from minio import Minio

from localcluster.certificates import Certificates
from localcluster.lepton import free_port
from localcluster.s3 import ACCESS, REGION, SECRET, Versitygw
from sample_data import wait_until_serving


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
    server = Versitygw(root, "127.0.0.1", free_port(), tls=tls)
    process = server.start()
    context = ssl.create_default_context(cafile=tls.ca) if tls else None
    try:
        wait_until_serving(process, server.endpoint, 30, log=server.log, context=context)
        yield S3Server(server.endpoint, tls.ca if tls else None)
    finally:
        server.stop()
