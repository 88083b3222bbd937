"""Live progress reads against real HTTP: the workloads' own progress server on 127.0.0.1, and addresses that fail."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import kopf
import pytest

from lepton_operator.controllers import progress, startup
from lepton_operator.controllers.config import OperatorOptions
from lepton_operator.controllers.progress import ProgressPoller, Target, fetch, target_of
from lepton_operator.controllers.wakeups import WAKEUPS, ObjectKey, Wakeups
from lepton_workloads.progress_server import ProgressServer, start

KEY = ObjectKey("TrainingJob", "ns", "job")
REPORT = {"schema": "lepton.ai/training-progress/v1", "step": 3, "epoch": 0, "loss": 1.5}


@pytest.fixture
def server() -> Iterator[ProgressServer]:
    started = start(0, host="127.0.0.1")
    assert started is not None
    yield started
    started.close()


def url(server: ProgressServer) -> str:
    return f"http://127.0.0.1:{server.port}/progress"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_fetch_reads_the_document_a_workload_serves(server: ProgressServer) -> None:
    server.publish(REPORT)
    assert asyncio.run(fetch(url(server))) == REPORT


def test_fetch_is_none_quickly_for_what_is_not_a_report(server: ProgressServer) -> None:
    assert asyncio.run(fetch(url(server))) is None  # 503: nothing published yet
    assert asyncio.run(fetch(url(server).replace("/progress", "/healthz"))) is None  # not JSON
    assert asyncio.run(fetch(url(server).replace("/progress", "/nothing"))) is None  # 404
    started = time.monotonic()
    assert asyncio.run(fetch(f"http://127.0.0.1:{closed_port()}/progress")) is None  # refused
    assert time.monotonic() - started < 1.0


def test_fetch_gives_up_on_a_silent_address_after_its_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        assert asyncio.run(fetch(f"http://127.0.0.1:{silent.getsockname()[1]}/progress", timeout=0.3)) is None
        assert time.monotonic() - started < 1.5


def pod(**status: Any) -> dict[str, Any]:
    ports = [{"name": "rendezvous", "containerPort": 29500}, {"name": "progress", "containerPort": 9400}]
    return {"metadata": {"uid": "u0"}, "spec": {"containers": [{"name": "worker", "ports": ports}]},
            "status": {"phase": "Running", "podIP": "10.1.2.3", **status}}  # fmt: skip


def test_a_running_pod_with_a_progress_port_is_a_target() -> None:
    assert target_of(pod()) == Target("u0", "http://10.1.2.3:9400/progress")
    assert target_of(pod(podIP="fd00::5")) == Target("u0", "http://[fd00::5]:9400/progress")
    assert target_of(pod(phase="Pending")) is None
    assert target_of(pod(podIP=None)) is None
    no_port = pod()
    no_port["spec"]["containers"][0]["ports"] = no_port["spec"]["containers"][0]["ports"][:1]
    assert target_of(no_port) is None  # rendered before the endpoint existed, or someone else's pod


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def woken(wakeups: Wakeups, key: ObjectKey) -> bool:
    return await wakeups.sleep(key, 0.01)


def test_poller_wakes_the_loop_only_when_the_report_changed(server: ProgressServer) -> None:
    async def scenario() -> None:
        wakeups, clock = Wakeups(), Clock()
        poller = ProgressPoller(wakeups, interval=10, clock=clock)
        poller.watch(KEY, Target("u0", url(server)))
        server.publish(REPORT)
        async with aiohttp.ClientSession() as session:
            assert await poller.poll(session) == [KEY] and await woken(wakeups, KEY)
            assert poller.live(KEY) == {"u0": REPORT}
            clock.now += 10
            assert await poller.poll(session) == [] and not await woken(wakeups, KEY)  # same report: no pass
            server.publish({**REPORT, "step": 4})
            clock.now += 5
            assert await poller.poll(session) == []  # not due yet
            clock.now += 5
            assert await poller.poll(session) == [KEY] and await woken(wakeups, KEY)
            assert poller.live(KEY)["u0"]["step"] == 4

    asyncio.run(scenario())


class Flaky(BaseHTTPRequestHandler):
    """Answers REPORT while ``healthy``, else 503; counts the requests."""

    healthy = True
    requests = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).requests += 1
        body = json.dumps(REPORT).encode() if type(self).healthy else b""
        self.send_response(200 if type(self).healthy else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def test_a_failed_read_keeps_the_last_report_and_backs_off() -> None:
    flaky = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=flaky.serve_forever, daemon=True).start()

    async def scenario() -> None:
        wakeups, clock = Wakeups(), Clock()
        poller = ProgressPoller(wakeups, interval=10, clock=clock)
        poller.watch(KEY, Target("u0", f"http://127.0.0.1:{flaky.server_address[1]}/progress"))
        async with aiohttp.ClientSession() as session:
            assert await poller.poll(session) == [KEY] and await woken(wakeups, KEY)
            Flaky.healthy = False
            for wait in (10, 10, 20, 40, 60, 60):  # doubled per failure, capped at a minute
                clock.now += wait - 1
                before = Flaky.requests
                assert await poller.poll(session) == [] and Flaky.requests == before  # not due yet
                clock.now += 1
                assert await poller.poll(session) == [] and Flaky.requests == before + 1
                assert poller.live(KEY) == {"u0": REPORT}  # unknown: the last report stands
                assert not await woken(wakeups, KEY)
            Flaky.healthy = True
            clock.now += 60
            assert await poller.poll(session) == [] and Flaky.requests == before + 2  # back, unchanged: no pass
            clock.now += 10
            assert await poller.poll(session) == [] and Flaky.requests == before + 3  # at the normal pace again

    try:
        asyncio.run(scenario())
    finally:
        flaky.shutdown()
        flaky.server_close()


def test_a_new_pod_starts_without_a_report_and_a_forgotten_key_is_not_read(server: ProgressServer) -> None:
    async def scenario() -> None:
        poller = ProgressPoller(Wakeups(), interval=10, clock=Clock())
        poller.watch(KEY, Target("u0", url(server)))
        server.publish(REPORT)
        async with aiohttp.ClientSession() as session:
            await poller.poll(session)
            poller.watch(KEY, Target("u0", url(server)))  # the same target again: state kept
            assert poller.live(KEY) == {"u0": REPORT}
            poller.watch(KEY, Target("u1", url(server)))  # the group restarted: a new worker 0
            assert poller.live(KEY) == {}
            poller.forget(KEY)
            assert len(poller) == 0 and await poller.poll(session) == []

    asyncio.run(scenario())


def test_a_round_over_many_unreachable_targets_is_bounded_by_one_timeout() -> None:
    async def scenario(target: str) -> float:
        poller = ProgressPoller(Wakeups(), interval=10, timeout=0.5)
        for index in range(50):
            poller.watch(ObjectKey("TrainingJob", "ns", f"job-{index}"), Target(f"u{index}", target))
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            assert await poller.poll(session) == []
            return time.monotonic() - started

    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1024)
        assert asyncio.run(scenario(f"http://127.0.0.1:{silent.getsockname()[1]}/progress")) < 2.0  # not 50 x 0.5 s


def test_the_operator_start_runs_the_poller_at_the_configured_interval(server: ProgressServer) -> None:
    async def scenario() -> None:
        memo = kopf.Memo(options=OperatorOptions(progress_interval=0.2))
        before = set(startup._background)
        await progress.start_progress_poller(memo=memo)
        [task] = startup._background - before
        try:
            assert progress.PROGRESS.interval == 0.2
            server.publish(REPORT)
            progress.PROGRESS.watch(KEY, Target("u0", url(server)))
            assert await asyncio.wait_for(WAKEUPS.sleep(KEY, 5), 6)  # read by the running task, which woke the loop
            assert progress.PROGRESS.live(KEY) == {"u0": REPORT}
            server.publish({**REPORT, "step": 4})
            assert await asyncio.wait_for(WAKEUPS.sleep(KEY, 5), 6)  # and again at its own pace
            assert progress.PROGRESS.live(KEY)["u0"]["step"] == 4
        finally:
            task.cancel()
            progress.PROGRESS.forget(KEY)
            WAKEUPS.forget(KEY)
            progress.PROGRESS.interval = progress.POLL_SECONDS

    asyncio.run(scenario())
