"""The activator: the request path of an InferenceService that may scale to zero.

At zero replicas there is no Triton pod: nothing reports pending requests, and
a request to the Service fails at once (no endpoints). The activator (KServe and
Knative have one of the same name) is a small asyncio proxy that sits in front
of such services. It forwards Triton's HTTP v2 protocol (health, model ready,
metadata, infer; sized or chunked bodies) and, as a plain TCP relay, gRPC to the
Triton pods; when they have no ready replica it **holds** requests instead of
failing them, exports how many it holds as the gauge
``lepton_activator_pending_requests`` on its own ``/metrics``, and releases them
as soon as a replica is ready. The autoscaler's demand query adds that gauge to
Triton's ``nv_inference_pending_request_count`` (``scaling.signals``), so demand
at zero replicas is seen and scales the service 0 -> 1.

Topology (rendered by ``render.activator`` for services with
``autoscaling.minReplicas: 0`` only; every other service renders as without an
activator, with no extra hop)::

    clients -> Service <name>          -> activator pods (Deployment <name>-activator)
            -> Service <name>-triton   -> Triton pods    (Deployment <name>)

The public name, ports and ``status.url`` stay the same, so clients never know.
The alternative, Knative's "activator in the path only at low scale" (the
operator flips the Service's selector between Triton and activator pods), saves
the hop at scale but needs the operator in the data path's timing: a flip
travels through the API server and every node's kube-proxy, requests sent to a
Service with no endpoints during the flip fail, and a flip back while requests
are held must wait for them. A static path has no such window and is pure
rendering; its cost (one more in-cluster hop and a new connection per request,
not measured yet) is paid only by services that opted into cold starts of
seconds to minutes.

How it knows the backend is ready, with no RBAC at all: a connection to the
``<name>-triton`` Service is refused while the Service has no ready endpoint
(its replicas' readiness is the model's readiness). After a refused connection,
and at start, the activator probes ``/v2/health/ready`` through the Service
every ``probe_interval`` seconds until it answers 200, then forwards. A request
whose connection is refused, or not answered within ``connect_timeout``, is
not lost: nothing was sent, so it is held and tried again (the only retry; a request that reached a replica is never
re-sent). Each forwarded request opens a new connection, so kube-proxy balances
requests over the replicas instead of pinning them to the ones the activator
first connected to.

Bounds: a request is held at most ``hold_timeout`` seconds (or until its client
disconnects: it then stops counting), then answered
``503`` with a Triton-style JSON error that says why (``tritonclient`` shows the
message); at most ``max_held`` requests are held, more get that ``503`` at once.
Bodies are read whole before forwarding (a held request must be replayable),
up to ``max_body_bytes``. gRPC connections are relayed byte for byte once the
backend is ready (held and counted the same way while it is not); an HTTP/2
connection then stays on one replica, as it would without the activator.

Security stays Triton's, end to end. Every HTTP header but the hop-by-hop ones
is forwarded, so the API key header of ``spec.auth`` reaches Triton, which
checks it (the API refuses hop-by-hop names as that header), and Triton's 403
comes back as it is. gRPC is relayed as bytes, so ``spec.tls`` is between the
client and Triton: the activator holds no certificate, sees no plaintext and no
metadata, and a mutual-TLS client's certificate reaches Triton. Its own probe is
``/v2/health/ready``, which Triton leaves open.

It runs as ``lepton-operator activator`` from the operator image; ``/healthz``
and ``/metrics`` are on the metrics port, so every path on the HTTP port is
Triton's (the activator answers there only with its own 503 and 502 errors).
The gauge counts held requests of any path, health checks included: whoever
waits for the server is demand.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from lepton_operator.render import activator as rendered
from lepton_operator.scaling.signals import ACTIVATOR_PENDING

PENDING_METRIC: Final = ACTIVATOR_PENDING
REQUESTS_METRIC: Final = "lepton_activator_requests"
#: Headers that describe one connection, not the request (RFC 9110 7.6.1), plus the ones the
#: client library sets itself for the forwarded request, and ``Expect`` (the activator has read
#: the whole body already; the client got its ``100 Continue`` from the activator).
HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect",
})  # fmt: skip
CHUNK_BYTES: Final = 64 * 1024
#: Seconds in-flight requests get after SIGTERM; the rendered pod's grace period covers it.
SHUTDOWN_SECONDS: Final = 25.0


@dataclass(frozen=True)
class Config:
    """Where the backend is and how long and how many requests may wait for it."""

    backend: str
    """Base URL of the Triton pods' HTTP endpoint, e.g. ``http://name-triton.ns.svc:8000``."""
    grpc_backend: tuple[str, int] | None = None
    """host and port of their gRPC endpoint (``None``: no gRPC relay)."""
    hold_timeout: float = rendered.HOLD_TIMEOUT_SECONDS
    max_held: int = rendered.MAX_HELD_REQUESTS
    probe_interval: float = rendered.PROBE_INTERVAL_SECONDS
    connect_timeout: float = 2.0
    max_body_bytes: int = 64 * 1024 * 1024  # Triton's own --http-max-input-size default


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` without the hop-by-hop ones (and those named in ``Connection``)."""
    named = {token.strip().lower() for token in headers.get("Connection", "").split(",") if token.strip()}
    return {key: value for key, value in headers.items() if key.lower() not in HOP_BY_HOP | named}


def error_body(message: str) -> bytes:
    """A Triton-style error document: ``tritonclient`` raises with its ``error`` text."""
    return json.dumps({"error": message}).encode()


class HoldRefused(Exception):
    """The request cannot be held: ``rejected`` (too many held) or ``timeout``; the message says why."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class Backend:
    """Whether the Triton pods have a ready replica, and the requests held until they do."""

    def __init__(self, config: Config, probe: Callable[[], Awaitable[bool]], pending: Gauge) -> None:
        self.config, self._probe, self._pending = config, probe, pending
        self.ready = asyncio.Event()
        self.held = 0
        self._prober: asyncio.Task[None] | None = None

    def lost(self) -> None:
        """A connection was refused: no ready replica (any more); probe until there is one."""
        self.ready.clear()
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe_until_ready())

    async def _probe_until_ready(self) -> None:
        while not self.ready.is_set():
            if await self._probe():
                self.ready.set()
                return
            await asyncio.sleep(self.config.probe_interval)

    async def wait_ready(self, deadline: float) -> None:
        """Return once a replica is ready; hold (counted in the gauge) until then or ``deadline``."""
        if self.ready.is_set():
            return
        if self.held >= self.config.max_held:
            raise HoldRefused("rejected", f"activator: {self.held} requests already wait for a ready replica of "
                              f"{self.config.backend}; try again later")  # fmt: skip
        self.held += 1
        self._pending.set(self.held)
        try:
            await asyncio.wait_for(self.ready.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise HoldRefused(
                "timeout",
                f"activator: no ready replica of {self.config.backend} within {self.config.hold_timeout:g} s"
                " (the service is scaled to zero or starting; the autoscaler sees this request as demand)"
            ) from None
        finally:
            self.held -= 1
            self._pending.set(self.held)

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with suppress(asyncio.CancelledError):
                await self._prober


class Activator:
    """The proxy: an aiohttp app for HTTP, a TCP relay for gRPC, metrics in a registry of its own."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = CollectorRegistry(auto_describe=True)
        pending = Gauge(PENDING_METRIC, "Requests held because no replica is ready", registry=self.registry)
        self.requests = Counter(REQUESTS_METRIC, "Requests by outcome: forwarded, timeout, rejected, "
                                "backend_error", ["outcome"], registry=self.registry)  # fmt: skip
        for outcome in ("forwarded", "timeout", "rejected", "backend_error"):
            self.requests.labels(outcome)
        # A new connection per request (force_close): kube-proxy balances each one.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        self.backend = Backend(config, self._probe, pending)

    async def _probe(self) -> bool:
        url = self.config.backend.rstrip("/") + "/v2/health/ready"
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=self.config.connect_timeout)) as answer:
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _hold(self, deadline: float) -> web.Response | None:
        """Wait for a ready replica; the 503 to answer when that fails."""
        try:
            await self.backend.wait_ready(deadline)
        except HoldRefused as refused:
            self.requests.labels(refused.outcome).inc()
            return web.Response(status=503, body=error_body(str(refused)), content_type="application/json")
        return None

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        """Forward one HTTP request, holding it while no replica is ready."""
        body = await request.read()  # sized or chunked; replayable while held
        deadline = time.monotonic() + self.config.hold_timeout
        url = self.config.backend.rstrip("/") + request.rel_url.raw_path_qs
        headers = forwarded_headers(request.headers)
        while True:
            refused = await self._hold(deadline)
            if refused is not None:
                return refused
            try:
                async with self.session.request(
                    request.method, url, data=body, headers=headers, allow_redirects=False
                ) as upstream:
                    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                                  headers=forwarded_headers(upstream.headers))  # fmt: skip
                    if upstream.content_length is not None:
                        response.content_length = upstream.content_length
                    await response.prepare(request)
                    async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
                        await response.write(chunk)
                    await response.write_eof()
                    self.requests.labels("forwarded").inc()
                    return response
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                # Refused, or no answer within connect_timeout (a Service without endpoints behind a
                # NetworkPolicy enforcer drops the SYN instead of rejecting it): nothing was sent,
                # so hold it and try again.
                self.backend.lost()
            except aiohttp.ClientError as error:
                self.requests.labels("backend_error").inc()
                message = f"activator: {request.method} {request.rel_url} to {self.config.backend} failed: {error}"
                return web.Response(status=502, body=error_body(message), content_type="application/json")

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One gRPC (any TCP) connection: held while no replica is ready, then piped both ways."""
        assert self.config.grpc_backend is not None
        deadline = time.monotonic() + self.config.hold_timeout
        try:
            while True:
                if await self._hold(deadline) is not None:
                    return
                try:
                    upstream_reader, upstream_writer = await asyncio.wait_for(
                        asyncio.open_connection(*self.config.grpc_backend), self.config.connect_timeout
                    )
                    break
                except (OSError, TimeoutError):
                    self.backend.lost()
            self.requests.labels("forwarded").inc()
            try:
                await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
            finally:
                upstream_writer.close()
        finally:
            writer.close()

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close(self) -> None:
        await self.backend.close()
        await self.session.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(CHUNK_BYTES):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with suppress(OSError):
            if sink.can_write_eof():
                sink.write_eof()


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(config: Config, host: str, port: int, metrics_port: int, grpc_port: int | None = None) -> None:
    """Run the activator until SIGTERM/SIGINT: HTTP on ``port``, ``/metrics`` and ``/healthz`` on ``metrics_port``."""
    activator = Activator(config)
    activator.backend.lost()  # unknown at start: probe before forwarding
    proxy_app = web.Application(client_max_size=config.max_body_bytes)
    proxy_app.router.add_route("*", "/{path:.*}", activator.proxy)
    admin_app = web.Application()
    admin_app.router.add_get("/metrics", activator.metrics)
    admin_app.router.add_get("/healthz", _healthz)
    # A client that gives up while held stops counting as demand: its handler is cancelled.
    # On SIGTERM in-flight requests get SHUTDOWN_SECONDS to finish (within the pod's grace period).
    runners = [web.AppRunner(proxy_app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_SECONDS),
               web.AppRunner(admin_app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)]  # fmt: skip
    relay: asyncio.Server | None = None
    try:
        for runner, listen in zip(runners, (port, metrics_port), strict=True):
            await runner.setup()
            await web.TCPSite(runner, host, listen).start()
        if grpc_port is not None and config.grpc_backend is not None:
            relay = await asyncio.start_server(activator.relay, host, grpc_port)
        print(f"activator: {host} http {port}, grpc {grpc_port}, metrics {metrics_port} -> {config.backend}", flush=True)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await stop.wait()  # then the runners' cleanup lets in-flight requests finish
    finally:
        if relay is not None:
            relay.close()
        for runner in runners:
            await runner.cleanup()
        await activator.close()


def run(config: Config, host: str, port: int, metrics_port: int, grpc_port: int | None = None) -> int:
    """Serve until SIGTERM or SIGINT (the pod's end), then stop."""
    asyncio.run(serve(config, host, port, metrics_port, grpc_port))
    return 0
