"""The activator as a real process (``lepton-operator activator``) in front of the Triton simulator on loopback.

The simulator (``lepton_workloads.triton_simulator``, a Triton stand-in) runs in
this test's process on a port reserved up front, so it can be absent, started
and stopped while the activator keeps forwarding to the same address, as a
Service's address stays while its replicas come and go. Every wait is on a
condition (the gauge, a thread's end), never on the clock.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
triton_http = pytest.importorskip("tritonclient.http")

from localcluster.certificates import make_certificates  # noqa: E402
from lepton_workloads import triton_config  # noqa: E402
from lepton_workloads.triton_simulator import Model, serve  # noqa: E402

from lepton_operator.activator import PENDING_METRIC, REQUESTS_METRIC, forwarded_headers  # noqa: E402
from lepton_operator.api.inference_security import DEFAULT_HEADER  # noqa: E402
from lepton_operator.render.inference_security import grpc_metadata_key  # noqa: E402

MODEL = "double"
T = TypeVar("T")


class Doubler(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    (tmp_path / MODEL / "1").mkdir(parents=True)
    torch.jit.script(Doubler()).save(str(tmp_path / MODEL / "1" / "model.pt"))
    config = triton_config.ModelConfig(
        name=MODEL, format="pytorch_libtorch", max_batch_size=8,
        inputs=(triton_config.Tensor("INPUT__0", "TYPE_FP32", (4,)),),
        outputs=(triton_config.Tensor("OUTPUT__0", "TYPE_FP32", (4,)),),
    )  # fmt: skip
    (tmp_path / MODEL / "config.pbtxt").write_text(triton_config.render(config))
    return tmp_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 120.0) -> T:
    """Poll until ``predicate`` is truthy; the timeout only bounds a hung test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class ActivatorProcess:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def samples(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+) (\S+)$", text, re.M)} | {
            f"{m[1]}{{{m[2]}}}": float(m[3]) for m in re.finditer(r'^(\w+)\{(outcome="\w+")\} (\S+)$', text, re.M)
        }

    def pending(self) -> float:
        return self.samples()[PENDING_METRIC]

    def outcomes(self, outcome: str) -> float:
        return self.samples()[f'{REQUESTS_METRIC}_total{{outcome="{outcome}"}}']


@pytest.fixture
def start_activator(tmp_path: Path) -> Iterator[Callable[..., ActivatorProcess]]:
    started: list[ActivatorProcess] = []

    def start(backend_port: int, *extra: str, grpc_backend_port: int | None = None) -> ActivatorProcess:
        ports = free_port(), free_port(), free_port()
        log = tmp_path / f"activator-{len(started)}.log"
        grpc = [f"--grpc-backend=127.0.0.1:{grpc_backend_port}"] if grpc_backend_port else []
        process = subprocess.Popen(
            [sys.executable, "-m", "lepton_operator.cli", "activator", f"--backend=http://127.0.0.1:{backend_port}",
             "--host=127.0.0.1", f"--port={ports[0]}", f"--grpc-port={ports[1]}", f"--metrics-port={ports[2]}",
             "--probe-interval-seconds=0.1", *grpc, *extra],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )  # fmt: skip
        activator = ActivatorProcess(process, *ports, log)
        started.append(activator)

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/healthz", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for(up, "the activator's /healthz")
        return activator

    yield start
    for activator in started:
        activator.process.terminate()
        assert activator.process.wait(20) == 0, activator.log.read_text()  # SIGTERM is a clean stop


class Simulator:
    """The Triton stand-in on a fixed port: absent until :meth:`start`, gone again after :meth:`stop`."""

    def __init__(self, repository: Path) -> None:
        self.model = Model(repository, MODEL, service_time=0.01, concurrency=4)
        self.port = free_port()
        self.servers: list[http.server.ThreadingHTTPServer] = []

    def start(self) -> None:
        self.servers = serve(self.model, self.port, None)

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        self.servers = []


@pytest.fixture
def simulator(repository: Path) -> Iterator[Simulator]:
    simulator = Simulator(repository)
    yield simulator
    simulator.stop()


@dataclass
class Call:
    """A request sent from a thread; ``result`` or ``error`` once it ended."""

    thread: threading.Thread
    outcome: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, function: Callable[[], Any]) -> Call:
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = function()
            except Exception as error:  # noqa: BLE001 - the test inspects it
                outcome["error"] = error

        call = cls(threading.Thread(target=run, daemon=True), outcome)
        call.thread.start()
        return call

    def wait(self) -> dict[str, Any]:
        self.thread.join(120)
        assert not self.thread.is_alive(), "the request never ended"
        return self.outcome


def infer(address: str, values: list[float]) -> Any:
    client = triton_http.InferenceServerClient(address, network_timeout=120, connection_timeout=120)
    try:
        tensor = np.array([values], dtype=np.float32)
        given = triton_http.InferInput("INPUT__0", list(tensor.shape), "FP32")
        given.set_data_from_numpy(tensor)
        return client.infer(MODEL, [given]).as_numpy("OUTPUT__0")
    finally:
        client.close()


def chunked_infer(address: str, values: list[float], headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """A JSON infer request with a chunked body (as proxies send it)."""
    body = json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 4], "data": values}]}).encode()
    connection = http.client.HTTPConnection(address, timeout=120)
    try:
        connection.request("POST", f"/v2/models/{MODEL}/infer", body=iter([body[:10], body[10:]]),
                           headers={"Content-Type": "application/json", **(headers or {})}, encode_chunked=True)  # fmt: skip
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def get_status(address: str, path: str) -> int:
    connection = http.client.HTTPConnection(address, timeout=120)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_requests_at_zero_are_held_counted_and_answered_once_a_replica_is_ready(
    start_activator: Callable[..., ActivatorProcess], simulator: Simulator
) -> None:
    activator = start_activator(simulator.port)
    assert activator.pending() == 0
    calls = [Call.start(lambda i=i: infer(activator.address, [i, i + 1, i + 2, i + 3])) for i in range(3)]
    calls.append(Call.start(lambda: chunked_infer(activator.address, [1.0, 2.0, 3.0, 4.0])))
    calls.append(Call.start(lambda: get_status(activator.address, f"/v2/models/{MODEL}/ready")))
    wait_for(lambda: activator.pending() == 5, "five requests held")
    assert all(call.thread.is_alive() for call in calls)  # held, not failed

    simulator.start()
    outcomes = [call.wait() for call in calls]
    assert [o.get("error") for o in outcomes] == [None] * 5
    for i, outcome in enumerate(outcomes[:3]):
        assert outcome["result"].tolist() == [[2.0 * (i + k) for k in range(4)]]
    status, answer = outcomes[3]["result"]
    assert status == 200 and answer["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    assert outcomes[4]["result"] == 200
    assert activator.pending() == 0
    assert activator.outcomes("forwarded") == 5

    # With a ready replica nothing waits; unknown paths get the backend's own answer.
    assert infer(activator.address, [1, 1, 1, 1]).tolist() == [[2.0] * 4]
    status, answer = chunked_infer(activator.address, [0.5, 0, 0, 0], {"Expect": "100-continue"})  # as curl sends
    assert status == 200 and answer["outputs"][0]["data"] == [1.0, 0, 0, 0]
    assert get_status(activator.address, "/v2/models/other/ready") == 400  # Triton: "unknown model"

    # Back to zero: the refused connection is not lost, it is held until a replica is back.
    simulator.stop()
    call = Call.start(lambda: infer(activator.address, [3, 3, 3, 3]))
    wait_for(lambda: activator.pending() == 1, "the request held again")
    simulator.start()
    outcome = call.wait()
    assert "error" not in outcome and outcome["result"].tolist() == [[6.0] * 4]
    wait_for(lambda: activator.pending() == 0, "the gauge back at 0")


class BlackHole:
    """A port whose connections never complete, as a Service without endpoints behaves behind an enforcer.

    kube-proxy answers a connection to such a Service with a reject; a NetworkPolicy
    enforcer whose accept rule runs first (kube-router on the local cluster) lets the
    SYN go on to nowhere, so the client's connect times out instead. Here: a listener
    with a backlog of one whose queue is filled, so the kernel drops further SYNs.
    """

    def __init__(self, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(0)
        self.fillers = [socket.create_connection(("127.0.0.1", port), timeout=5)]  # the queue is full now

    def close(self) -> None:
        for sock in (*self.fillers, self.listener):
            sock.close()


def test_a_connect_that_times_out_is_held_like_a_refused_one_not_failed(
    start_activator: Callable[..., ActivatorProcess], simulator: Simulator
) -> None:
    simulator.start()
    activator = start_activator(simulator.port)
    assert infer(activator.address, [1, 1, 1, 1]).tolist() == [[2.0] * 4]  # the backend is known ready
    simulator.stop()
    hole = BlackHole(simulator.port)
    try:
        call = Call.start(lambda: infer(activator.address, [2, 2, 2, 2]))
        wait_for(lambda: activator.pending() == 1, "the request held after its connect timed out")
        assert call.thread.is_alive()
    finally:
        hole.close()
    simulator.start()
    outcome = call.wait()
    assert "error" not in outcome and outcome["result"].tolist() == [[4.0] * 4]
    assert activator.outcomes("backend_error") == 0


def test_without_a_replica_requests_fail_after_the_hold_timeout_with_a_clear_503(
    start_activator: Callable[..., ActivatorProcess],
) -> None:
    activator = start_activator(free_port(), "--hold-timeout-seconds=3", "--max-held-requests=1")
    held = Call.start(lambda: infer(activator.address, [1, 2, 3, 4]))
    wait_for(lambda: activator.pending() == 1, "one request held")

    connection = http.client.HTTPConnection(activator.address, timeout=30)
    connection.request("GET", "/v2/health/ready")
    full = connection.getresponse()
    assert full.status == 503
    assert "1 requests already wait for a ready replica" in json.loads(full.read())["error"]

    error = held.wait()["error"]
    assert isinstance(error, triton_http.InferenceServerException)
    assert error.status() == "503"
    assert "no ready replica of http://127.0.0.1:" in error.message() and "within 3 s" in error.message()
    wait_for(lambda: activator.pending() == 0, "the gauge back at 0")
    assert activator.outcomes("timeout") == 1 and activator.outcomes("rejected") == 1
    assert activator.outcomes("forwarded") == 0


def test_a_client_that_gives_up_while_held_stops_counting_as_demand(
    start_activator: Callable[..., ActivatorProcess],
) -> None:
    activator = start_activator(free_port(), "--hold-timeout-seconds=3600")
    with socket.create_connection(("127.0.0.1", activator.http_port), timeout=30) as client:
        client.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: activator.pending() == 1, "the request held")
    wait_for(lambda: activator.pending() == 0, "the gauge back at 0 long before the hold timeout")


class EchoServer:
    """A TCP echo server on a fixed port, standing in for Triton's gRPC endpoint."""

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self.listener:
            connection, _ = self.listener.accept()
            with connection:
                while data := connection.recv(4096):
                    connection.sendall(data)


class ReadyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/v2/health/ready" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_grpc_connections_are_held_then_relayed_byte_for_byte(start_activator: Callable[..., ActivatorProcess]) -> None:
    http_port, grpc_port = free_port(), free_port()
    activator = start_activator(http_port, grpc_backend_port=grpc_port)
    client = socket.create_connection(("127.0.0.1", activator.grpc_port), timeout=60)
    with client:
        client.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        wait_for(lambda: activator.pending() == 1, "the connection held")
        EchoServer(grpc_port)
        health = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), ReadyHandler)
        threading.Thread(target=health.serve_forever, daemon=True).start()
        try:
            received = b""
            while len(received) < 24:
                received += client.recv(4096)
            assert received == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        finally:
            health.shutdown()
            health.server_close()
    wait_for(lambda: activator.pending() == 0, "the gauge back at 0")


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    headers = {"Host": "a", "Connection": "keep-alive, X-Private", "X-Private": "1", "Transfer-Encoding": "chunked",
               "Content-Length": "3", "Inference-Header-Content-Length": "120", "Content-Type": "application/json",
               "Expect": "100-continue"}  # fmt: skip
    assert forwarded_headers(headers) == {"Inference-Header-Content-Length": "120", "Content-Type": "application/json"}


class RestrictedHandler(ReadyHandler):
    """Triton with ``--http-restricted-api=inference:lepton-api-key=k``: health open, infer 403 without the key."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        allowed = self.headers.get(DEFAULT_HEADER) == "k"
        body = b'{"outputs": []}' if allowed else f'{{"error": "This API is restricted, expecting header \'{DEFAULT_HEADER}\'"}}'.encode()
        self.send_response(200 if allowed else 403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_the_api_key_header_reaches_triton_and_its_403_comes_back(start_activator: Callable[..., ActivatorProcess]) -> None:
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RestrictedHandler)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        activator = start_activator(backend.server_address[1])
        assert chunked_infer(activator.address, [1.0] * 4, {DEFAULT_HEADER: "k"}) == (200, {"outputs": []})
        status, answer = chunked_infer(activator.address, [1.0] * 4)
        assert status == 403 and DEFAULT_HEADER in answer["error"]
    finally:
        backend.shutdown()
        backend.server_close()


def test_grpc_over_mutual_tls_and_its_key_metadata_pass_through_the_relay_end_to_end(
    start_activator: Callable[..., ActivatorProcess], tmp_path: Path
) -> None:
    """The activator never terminates TLS: the client's handshake (and its certificate) reach the server behind it."""
    grpc = pytest.importorskip("grpc")
    made = make_certificates(tmp_path, ["DNS:serve.ns.svc"])
    pem = {name: path.read_bytes() for name, path in (("ca.crt", made.ca), ("server.crt", made.server_cert),
           ("server.key", made.server_key), ("client.crt", made.client_cert), ("client.key", made.client_key))}  # fmt: skip
    key = grpc_metadata_key(DEFAULT_HEADER)

    def echo_key(_: bytes, context: Any) -> bytes:
        return str(dict(context.invocation_metadata()).get(key, "")).encode()

    server = grpc.server(ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo_key)})])  # fmt: skip
    credentials = grpc.ssl_server_credentials([(pem["server.key"], pem["server.crt"])], pem["ca.crt"], True)
    grpc_port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    health = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ReadyHandler)
    threading.Thread(target=health.serve_forever, daemon=True).start()
    activator = start_activator(health.server_address[1], grpc_backend_port=grpc_port)

    def call(*client_pair: bytes) -> bytes:
        channel = grpc.secure_channel(f"127.0.0.1:{activator.grpc_port}", grpc.ssl_channel_credentials(pem["ca.crt"], *client_pair),
                                      options=[("grpc.ssl_target_name_override", "serve.ns.svc")])  # fmt: skip
        with channel:
            method = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            answer: bytes = method(b"", metadata=[(key, "k")], timeout=60)
            return answer

    try:
        assert call(pem["client.key"], pem["client.crt"]) == b"k"
        with pytest.raises(grpc.RpcError) as refused:  # no client certificate: the server behind refuses the handshake
            call()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)
        health.shutdown()
        health.server_close()
