"""A real S3 server for tests: versitygw (built from the Go module proxy) over a local directory.

One class serves both places S3 runs in the tests:

- on this machine's loopback, for the workloads' tests (``workloads/tests/s3_server.py``);
- inside the local cluster's network namespace on the node's address, so that real
  pods (a prepare Job, a model stager) reach it the way they reach any S3 endpoint
  outside the cluster (``prefix`` is ``Cluster.network_argv``'s ``nsenter``).

:meth:`Versitygw.stop` and :meth:`Versitygw.start` take it down and bring it back on
the same address with the same objects (its ``posix`` backend is a directory), which
is what the chaos tests need. versitygw checks SigV4 signatures, so wrong keys are
refused the way AWS refuses them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from localcluster.build import ensure_versitygw
from localcluster.certificates import Certificates

ACCESS, SECRET = "lepton-test", "lepton-test-secret-key"
REGION = "us-east-1"


class Versitygw:
    """versitygw serving ``root/backend`` on ``host:port``; over https with ``tls``'s server certificate."""

    def __init__(self, root: Path, host: str, port: int, *, tls: Certificates | None = None,
                 prefix: Sequence[str] = ()) -> None:  # fmt: skip
        self.root = root
        self.address = f"{host}:{port}"
        self.endpoint = f"{'https' if tls else 'http'}://{self.address}"
        self.tls = tls
        self.prefix = list(prefix)
        self.log = root / "versitygw.log"
        (root / "backend").mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        certificate = ["--cert", str(self.tls.server_cert), "--key", str(self.tls.server_key)] if self.tls else []
        return [*self.prefix, str(ensure_versitygw()), "--access", ACCESS, "--secret", SECRET,
                "--port", self.address, *certificate, "posix", str(self.root / "backend")]  # fmt: skip

    def start(self) -> subprocess.Popen[bytes]:
        """Run the server (again, after :meth:`stop`); the caller waits until it serves (it knows from where)."""
        with self.log.open("a") as log:
            self.process = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=log)
        return self.process

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; connections in flight are cut, as in an outage."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def exited(self) -> str | None:
        """Why the server is not running, with its log's tail, or ``None`` while it runs."""
        if self.process is None or self.process.poll() is None:
            return None
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        return f"versitygw exited with {self.process.returncode}: {tail}"
