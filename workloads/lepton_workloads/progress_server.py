"""Live progress over HTTP, so the operator sees a workload advance while it runs.

A termination message is read only when a container ends; a trainer that runs
for a day would show no progress until then. So the trainer (global rank 0
only) and the preparer also serve their latest progress document:

* ``GET /progress`` - the document last passed to :meth:`ProgressServer.publish`
  (JSON, the same versioned schema as the termination message:
  ``lepton.ai/training-progress/v1`` or ``lepton.ai/prepare-progress/v1``);
  ``503`` until something was published.
* ``GET /healthz`` - ``200 ok`` while the server runs.

The port is ``LEPTON_PROGRESS_PORT`` (set by the operator on the pods it
renders, with a container port named ``progress``), default :data:`DEFAULT_PORT`;
``off`` disables it and ``0`` picks a free port (tests). The operator polls the
running pod's IP, so no pod needs RBAC and nothing is pushed anywhere.

Serving must never break the workload: a busy port or a bad value is logged on
stderr and the workload goes on without the endpoint (:func:`start` returns
``None``). The server runs in a daemon thread (``ThreadingHTTPServer``), and
publishing only swaps a reference under a lock: the document is serialized when
someone asks, so publishing every training step costs next to nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORT_ENV = "LEPTON_PROGRESS_PORT"
DEFAULT_PORT = 9400
PROGRESS_PATH = "/progress"
HEALTH_PATH = "/healthz"
DISABLED = "off"
POLL_SECONDS = 0.5
"""How often the serving loop looks for a shutdown request (:meth:`ProgressServer.close` does not wait for it)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    document: Mapping[str, Any] | None = None
    lock: threading.Lock


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        path = self.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            self._answer(200, b"ok\n", "text/plain")
        elif path == PROGRESS_PATH:
            with self.server.lock:
                document = self.server.document
            if document is None:
                self._answer(503, b"no progress reported yet\n", "text/plain")
            else:
                self._answer(200, json.dumps(document, sort_keys=True).encode(), "application/json")
        else:
            self._answer(404, b"not found\n", "text/plain")

    def _answer(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server signature
        """Quiet: the operator polls every few seconds, which is not worth a log line each."""


class ProgressServer:
    """``/progress`` and ``/healthz`` on ``host:port``, served from a daemon thread."""

    def __init__(self, port: int, host: str = "") -> None:
        self._server = _Server((host, port), _Handler)
        self._server.lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL_SECONDS,), name="progress-server", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def publish(self, document: Mapping[str, Any]) -> None:
        """Make ``document`` the answer of ``GET /progress`` (a copy: later changes by the caller do not leak)."""
        copy = dict(document)
        with self._server.lock:
            self._server.document = copy

    def close(self) -> None:
        """Stop serving, at once.

        ``shutdown`` alone waits for the serving loop's next poll, up to half a second at the end of
        every preparation and training run (most of the wall time of preparing a small dataset);
        shutting the listening socket down makes that poll return now.
        """
        stopping = threading.Thread(target=self._server.shutdown, name="progress-server-stop")
        stopping.start()
        with contextlib.suppress(OSError):
            self._server.socket.shutdown(socket.SHUT_RDWR)
        stopping.join()
        self._server.server_close()


def configured_port(environ: Mapping[str, str] | None = None) -> int | None:
    """The port :data:`PORT_ENV` asks for (``None``: disabled); raises ``ValueError`` on a bad value."""
    value = (os.environ if environ is None else environ).get(PORT_ENV, "").strip()
    if value.lower() == DISABLED:
        return None
    port = int(value) if value else DEFAULT_PORT
    if not 0 <= port <= 65535:
        raise ValueError(f"{PORT_ENV}={value} is not a port")
    return port


def start(port: int | None = None, host: str = "") -> ProgressServer | None:
    """Serve progress on ``port`` (default: from the environment); ``None`` when disabled or impossible."""
    try:
        chosen = configured_port() if port is None else port
        if chosen is None:
            return None
        return ProgressServer(chosen, host)
    except (OSError, ValueError) as error:
        print(f"progress endpoint disabled: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return None
