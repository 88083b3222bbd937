"""Scale-from-zero e2e harness: the activator and the Service behind it, as local processes.

Pods on kwok nodes run nothing, so (as :mod:`localcluster.serving` does for Triton
replicas) the harness plays the activator pods' data plane on this machine:

- :class:`ServiceStandIn` is the ``<name>-triton`` Service: a loopback port that
  relays each connection to one of the Ready replicas' simulators, round robin,
  and refuses connections while there is none, as kube-proxy does for a Service
  without ready endpoints (the listener exists only while there is an endpoint).
  ``serving.Replicas`` keeps its endpoints in step with the Ready pods.
- :class:`LocalActivator` runs ``lepton-operator activator`` (the command the
  activator pods run) against that port; :meth:`LocalActivator.scrape_group` is
  its Prometheus target with the labels a scrape of the activator pods gives
  (``namespace``, ``service``, ``pod``).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster.forward import relay
from localcluster.kube import wait_until
from localcluster.lepton import free_port, http_ok

PENDING = "lepton_activator_pending_requests"


class ServiceStandIn:
    """A Service's address on loopback: connections go to a ready endpoint, or are refused when none is."""

    def __init__(self) -> None:
        self.port = free_port()
        self._endpoints: list[tuple[str, int]] = []
        self._listener: socket.socket | None = None
        self._next = 0
        self._lock = threading.Lock()

    def set_endpoints(self, addresses: list[str]) -> None:
        """The ready endpoints now (``host:port``); listen while there is one."""
        with self._lock:
            self._endpoints = [(host, int(port)) for host, _, port in (a.rpartition(":") for a in addresses)]
            if self._endpoints and self._listener is None:
                self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
                threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
            elif not self._endpoints and self._listener is not None:
                self._close()

    def _close(self) -> None:
        assert self._listener is not None
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of its thread
        except OSError:
            pass
        self._listener.close()
        self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._endpoints:
                    client.close()
                    continue
                target = self._endpoints[self._next % len(self._endpoints)]
                self._next += 1
            threading.Thread(target=relay, args=(client, target), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._close()


@dataclass
class LocalActivator:
    """``lepton-operator activator`` on loopback ports, in front of ``backend``."""

    process: subprocess.Popen[bytes]
    http_port: int
    metrics_port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def pending(self) -> float:
        """The held requests, from its ``/metrics``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            found = re.search(rf"^{PENDING} (\S+)$", response.read().decode(), re.M)
        assert found, f"{PENDING} is not exported"
        return float(found[1])

    def scrape_group(self, namespace: str, service: str) -> dict[str, Any]:
        """Its Prometheus target, labelled as the activator pods of ``service`` are."""
        return {"targets": [f"127.0.0.1:{self.metrics_port}"],
                "labels": {"namespace": namespace, "service": service, "pod": f"{service}-activator-local"}}  # fmt: skip

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


def start_activator(backend: str, log: Path, hold_timeout: float = 180.0) -> LocalActivator:
    """Start an activator forwarding to ``backend`` (a base URL) and wait for its ``/healthz``."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lepton_operator.cli", "activator", f"--backend={backend}", "--host=127.0.0.1",
         f"--port={http_port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}",
         f"--hold-timeout-seconds={hold_timeout}", "--probe-interval-seconds=0.2"],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    activator = LocalActivator(process, http_port, metrics_port, log)

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the activator exited: {log.read_text()}")
        return http_ok(f"http://127.0.0.1:{metrics_port}/healthz")

    wait_until(up, 60, "the activator's /healthz")
    return activator
