"""Serving e2e harness: a real Prometheus, one Triton simulator per Ready replica, a tritonclient load.

Pods on kwok nodes run nothing, so the harness plays the data plane of an
InferenceService on this machine, kept in step with the cluster:

- :class:`Prometheus` runs the Debian ``prometheus`` binary (2.42; its build has
  no Kubernetes discovery) scraping every second from file-based target lists,
  one file per source (each :class:`Replicas` writes its own service's file, so
  several services can share one server).
- :class:`Replicas` watches the service's pods (by ``status.selector``): for each
  Ready pod it starts ``lepton_workloads.triton_simulator`` on free ports, waits
  for ``/v2/models/<m>/ready`` (the readiness probe's question), then adds it to
  the load's endpoints and to the target file with the labels a ServiceMonitor
  would give (``namespace``, ``service``, ``pod``). When a pod goes, it does what
  Kubernetes and Triton do on scale-down: endpoint removed first, in-flight
  requests finished (Triton's exit timeout), then the process stops.
- :class:`Load` sends requests with ``tritonclient.http`` at a set rate (open
  loop, a thread per request) to the current endpoints, counting failures.

``prometheus`` comes from apt (``make tools`` installs it on a fresh machine).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from localcluster.closed_loop_client import percentile
from localcluster.kube import wait_until
from localcluster.lepton import free_port, http_ok

PROMETHEUS = "prometheus"
SCRAPE_SECONDS = 1


class Prometheus:
    """A Prometheus server scraping the targets written to ``targets/*.json`` (see :meth:`set_targets`)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which(PROMETHEUS)
        if binary is None:
            raise RuntimeError("prometheus is not installed: run `make tools` (apt-get install prometheus)")
        self.workdir = workdir
        self.targets = workdir / "targets"
        self.targets.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "scrape_configs": [{
                "job_name": "triton",
                "file_sd_configs": [{"files": [str(self.targets / "*.json")], "refresh_interval": "1s"}],
            }],
        }  # fmt: skip
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        """Run the server (again, after :meth:`stop`: same port, same data) and wait until it is ready."""
        self.log = (self.workdir / "prometheus.log").open("a")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(lambda: http_ok(self.url + "/-/ready"), 60, "Prometheus ready")

    def set_targets(self, groups: list[dict[str, Any]], source: str = "default") -> None:
        """Replace the targets of ``source`` atomically (Prometheus re-reads them within a second).

        Each source has its own file, so one source's update never drops another's targets.
        """
        path = self.targets / f"{source}.json"
        staging = path.with_suffix(".tmp")  # not *.json: Prometheus never reads a half-written file
        staging.write_text(json.dumps(groups))
        staging.replace(path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.log.close()


@dataclass
class Target:
    """Where requests go: one simulator process, or a Service (through a forwarder to its ClusterIP)."""

    name: str
    address: str  # host:port of Triton's HTTP endpoint
    in_flight: int = 0
    served: int = 0


@dataclass
class Endpoint:
    """One simulator process: a Ready replica's data plane."""

    pod: str
    process: subprocess.Popen[bytes]
    http_port: int
    metrics_port: int

    def __post_init__(self) -> None:
        self.target = Target(self.pod, f"127.0.0.1:{self.http_port}")


def infer(address: str, model: str, tensor: Any, timeout: float = 120.0, headers: Mapping[str, str] | None = None) -> Any:
    """One ``tritonclient.http`` inference on a new connection; the first output as a numpy array.

    A new client per request (as a fleet of clients would): each connection is balanced anew, so
    a replica leaving the endpoints gets no new requests. ``headers``: e.g. a protected service's
    API key (``access.ApiKey.http``).
    """
    import tritonclient.http as triton_http  # noqa: PLC0415 - only clients need it

    client = triton_http.InferenceServerClient(address, network_timeout=timeout, connection_timeout=timeout)
    try:
        given = triton_http.InferInput("INPUT__0", list(tensor.shape), "FP32")
        given.set_data_from_numpy(tensor)
        result = client.infer(model, [given], headers=dict(headers) if headers else None)
        return result.as_numpy(result.get_response()["outputs"][0]["name"])
    finally:
        client.close()


@dataclass
class Load:
    """Open-loop requests at ``rate`` per second over the current targets (round robin)."""

    model: str
    make_input: Callable[[], Any]
    targets: list[Target] = field(default_factory=list)
    headers: Mapping[str, str] | None = None  # sent with every request (a protected service's API key)
    rate: float = 0.0
    succeeded: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _next: int = 0

    def _pick(self) -> Target | None:
        with self.lock:
            if not self.targets:
                return None
            target = self.targets[self._next % len(self.targets)]
            self._next += 1
            target.in_flight += 1
            return target

    def _one(self, target: Target) -> None:
        started = time.monotonic()
        try:
            infer(target.address, self.model, self.make_input(), headers=self.headers)
            with self.lock:
                self.succeeded += 1
                target.served += 1
                self.latencies.append(time.monotonic() - started)
        except Exception as error:
            with self.lock:
                self.failed += 1
                self.errors.append(f"{target.name}: {type(error).__name__}: {error}")
        finally:
            with self.lock:
                target.in_flight -= 1

    def run(self) -> None:
        """Send until :meth:`stop`; with no target a request is counted as failed (nothing serves)."""
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self.rate <= 0:
                time.sleep(0.05)
                next_at = time.monotonic()
                continue
            next_at += 1.0 / self.rate
            target = self._pick()
            if target is None:
                with self.lock:
                    self.failed += 1
                    self.errors.append("no ready endpoint")
            else:
                threading.Thread(target=self._one, args=(target,), daemon=True).start()
            time.sleep(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()


@dataclass(frozen=True)
class LoopResult:
    """What :func:`closed_loop` measured."""

    latencies: list[float]
    failed: int
    seconds: float

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds


def closed_loop(address: str, model: str, make_input: Callable[[], Any], concurrency: int, seconds: float,
                headers: Mapping[str, str] | None = None) -> LoopResult:  # fmt: skip
    """``concurrency`` clients, each sending its next request (with ``headers``) when the last one answered, for ``seconds``."""
    lock, latencies, failed = threading.Lock(), [], [0]
    end = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                infer(address, model, make_input(), headers=headers)
                with lock:
                    latencies.append(time.monotonic() - started)
            except Exception:  # noqa: BLE001 - counted, the loop goes on
                with lock:
                    failed[0] += 1

    began = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoopResult(latencies, failed[0], time.monotonic() - began)


class Backend(Protocol):
    """What keeps a Service's endpoints (``activation.ServiceStandIn``): the ready replicas' ``host:port``."""

    def set_endpoints(self, addresses: list[str]) -> None: ...


class Replicas:
    """Keeps one simulator per Ready pod of a service, its endpoints and Prometheus' targets in step.

    ``backend``, when given, gets the ready endpoints too (the Service behind an activator), and
    ``also_scrape`` are more Prometheus targets published with the replicas' (the activator's).
    """

    def __init__(
        self,
        list_pods: Callable[[], list[dict[str, Any]]],
        *,
        namespace: str,
        service: str,
        model: str,
        repository: Path,
        prometheus: Prometheus,
        load: Load,
        service_time_ms: float,
        concurrency: int = 1,
        backend: Backend | None = None,
        also_scrape: list[dict[str, Any]] | None = None,
    ) -> None:
        self.list_pods, self.namespace, self.service, self.model = list_pods, namespace, service, model
        self.repository, self.prometheus, self.load = repository, prometheus, load
        self.service_time_ms, self.concurrency = service_time_ms, concurrency
        self.backend, self.also_scrape = backend, list(also_scrape or [])
        self.running: dict[str, Endpoint] = {}
        self.ready_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._finished = threading.Event()

    def _start(self, pod: str) -> Endpoint:
        http_port, metrics_port = free_port(), free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "lepton_workloads.triton_simulator", f"--model-repository={self.repository}",
             f"--model={self.model}", f"--http-port={http_port}", f"--metrics-port={metrics_port}",
             f"--service-time-ms={self.service_time_ms}", f"--concurrency={self.concurrency}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return Endpoint(pod, process, http_port, metrics_port)

    def _publish(self) -> None:
        with self.load.lock:
            self.load.targets = [e.target for e in self.running.values() if e.pod in self.ready_at]
            addresses = [target.address for target in self.load.targets]
        if self.backend is not None:
            self.backend.set_endpoints(addresses)
        self.prometheus.set_targets([
            {"targets": [f"127.0.0.1:{e.metrics_port}"],
             "labels": {"namespace": self.namespace, "service": self.service, "pod": e.pod}}
            for e in self.running.values() if e.pod in self.ready_at
        ] + self.also_scrape, source=f"{self.namespace}.{self.service}")  # fmt: skip

    def _retire(self, endpoint: Endpoint) -> None:
        """Scale-down as Kubernetes + Triton do it: out of the endpoints, drain, then stop."""
        self.ready_at.pop(endpoint.pod, None)
        self._publish()
        wait_until(lambda: endpoint.target.in_flight == 0, 30, f"{endpoint.pod} to finish its requests")
        endpoint.process.terminate()
        endpoint.process.wait(10)

    def sync(self) -> None:
        """One pass: start simulators for new Ready pods, mark them ready when Triton would, retire gone ones."""
        ready_pods = {
            pod["metadata"]["name"]
            for pod in self.list_pods()
            if not pod["metadata"].get("deletionTimestamp")
            and any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions", []))
        }  # fmt: skip
        for pod in ready_pods - set(self.running):
            self.running[pod] = self._start(pod)
        for pod, endpoint in list(self.running.items()):
            if pod not in ready_pods:
                self._retire(self.running.pop(pod))
            elif pod not in self.ready_at and http_ok(f"http://127.0.0.1:{endpoint.http_port}/v2/models/{self.model}/ready"):
                self.ready_at[pod] = time.monotonic()
        self._publish()

    def run(self) -> None:
        """:meth:`sync` every half second until :meth:`stop`."""
        try:
            while not self._stop.is_set():
                self.sync()
                time.sleep(0.5)
        finally:
            self._finished.set()

    def stop(self) -> None:
        """End :meth:`run` (waiting for its pass) and every simulator."""
        self._stop.set()
        self._finished.wait(60)
        for endpoint in self.running.values():
            endpoint.process.terminate()
        for endpoint in self.running.values():
            endpoint.process.wait(10)
