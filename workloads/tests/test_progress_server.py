"""The live progress endpoint of the trainer and the preparer, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_workloads import prepare, progress_server, train
from localcluster.lepton import free_port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def progress(server: progress_server.ProgressServer) -> dict[str, Any]:
    code, body = get(f"http://127.0.0.1:{server.port}/progress")
    assert code == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


@pytest.fixture
def server() -> Iterator[progress_server.ProgressServer]:
    started = progress_server.start(0, host="127.0.0.1")
    assert started is not None
    yield started
    started.close()


def test_progress_answers_the_latest_published_document(server: progress_server.ProgressServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    assert get(base + "/progress")[0] == 503  # nothing reported yet: not an empty report
    assert get(base + "/healthz") == (200, b"ok\n")
    assert get(base + "/other")[0] == 404
    report = {"step": 1, "loss": 2.5}
    server.publish(report)
    report["step"] = 99  # the caller's later changes are not what was published
    assert progress(server) == {"step": 1, "loss": 2.5}
    server.publish({"step": 2, "loss": 1.25})
    assert progress(server) == {"step": 2, "loss": 1.25}


def test_a_busy_port_or_a_bad_setting_disables_the_endpoint_without_failing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert progress_server.start(taken.getsockname()[1], host="127.0.0.1") is None
    assert "progress endpoint disabled: OSError" in capsys.readouterr().err
    monkeypatch.setenv(progress_server.PORT_ENV, "not-a-port")
    assert progress_server.start() is None
    assert "ValueError" in capsys.readouterr().err
    monkeypatch.setenv(progress_server.PORT_ENV, "off")
    assert progress_server.start() is None
    assert progress_server.configured_port({}) == progress_server.DEFAULT_PORT == 9400
    assert progress_server.configured_port({progress_server.PORT_ENV: "9500"}) == 9500


def test_trainer_rank_zero_serves_its_reports_and_other_ranks_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv(progress_server.PORT_ENV, str(port))
    assert train.serve_progress(1) is None
    served = train.serve_progress(0)
    assert served is not None and served.port == port
    try:
        served.publish(train.progress_document({"step": 7, "epoch": 1, "loss": 0.5, "resumedFrom": 0}))
        assert progress(served) == {"schema": train.PROGRESS_SCHEMA, "step": 7, "epoch": 1, "loss": 0.5, "resumedFrom": 0}
    finally:
        served.close()


def test_termination_message_is_the_same_document_as_the_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "termination-log"
    monkeypatch.setenv("LEPTON_TERMINATION_LOG", str(target))
    report = {"step": 64, "epoch": 3, "loss": 0.1, "firstLoss": 0.7, "seconds": 2.0}
    train.write_termination_message(report)
    assert json.loads(target.read_text()) == train.progress_document(report)
    assert train.progress_document(report) == {"schema": train.PROGRESS_SCHEMA, "step": 64, "epoch": 3, "loss": 0.1}


def test_preparer_publishes_what_it_writes_to_its_progress_file(
    tmp_path: Path, server: progress_server.ProgressServer
) -> None:
    reporter = prepare.Reporter(tmp_path, server)
    assert progress(server)["bytesDone"] == 0  # served from the start, before the first update
    reporter.update(force=True, bytesDone=4096, bytesTotal=10000)
    document = progress(server)
    assert document == {"schema": prepare.PROGRESS_SCHEMA, "stage": "fetching", "bytesDone": 4096,
                        "bytesTotal": 10000, "records": 0}  # fmt: skip
    assert json.loads((tmp_path / prepare.PROGRESS_FILE).read_text()) == document


def test_close_does_not_wait_for_the_serving_loop_to_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every preparation and training run ends with close(): it wakes the loop instead of waiting out a poll."""
    monkeypatch.setattr(progress_server, "POLL_SECONDS", 3600.0)
    started = progress_server.start(0, host="127.0.0.1")
    assert started is not None
    closing = threading.Thread(target=started.close)
    closing.start()
    closing.join(60)  # a safety bound, far under the hour the loop would otherwise sleep
    assert not closing.is_alive()
