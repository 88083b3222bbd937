"""``lepton-operator run``: flags, defaults, and the hand-over to the runner."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lepton_operator import cli
from lepton_operator.controllers import config, runner
from lepton_operator.controllers.config import OperatorOptions
from lepton_operator.render.network import NetworkContext


@pytest.fixture(autouse=True)
def no_network_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's pod sets these; a test's result must not depend on where it runs."""
    for name in (config.MONITORING_NAMESPACE_ENV, config.OPERATOR_NAMESPACE_ENV, config.OPERATOR_POD_LABELS_ENV):
        monkeypatch.delenv(name, raising=False)


def options(*argv: str) -> OperatorOptions:
    return cli.run_options(cli.build_parser().parse_args(["run", *argv]))


def test_defaults_serve_all_namespaces_with_peering() -> None:
    opts = options()
    assert opts.namespaces == () and opts.clusterwide
    assert (opts.metrics_port, opts.health_port) == (config.DEFAULT_METRICS_PORT, config.DEFAULT_HEALTH_PORT) == (8080, 8081)
    assert not opts.standalone and not opts.verbose
    assert opts.peering_name == config.DEFAULT_PEERING_NAME
    assert 1 <= opts.priority <= config.AUTO_PRIORITY_MAX


def test_every_flag() -> None:
    opts = options(
        "--namespace", "team-a", "--namespace", "team-b-*",
        "--metrics-port", "9100", "--health-port", "9101",
        "--priority", "1000000", "--peering-name", "lepton-dev", "--standalone", "--verbose",
        "--progress-interval", "2.5",
    )  # fmt: skip
    assert opts == OperatorOptions(
        namespaces=("team-a", "team-b-*"),
        metrics_port=9100,
        health_port=9101,
        priority=1_000_000,
        standalone=True,
        peering_name="lepton-dev",
        verbose=True,
        progress_interval=2.5,
    )
    assert not opts.clusterwide
    assert opts.liveness_endpoint == "http://0.0.0.0:9101/healthz"
    assert options("-v", "--priority", "0").verbose and options("--priority", "-5").priority == -5


def test_network_policy_settings_from_flags_or_the_operators_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert options().network == NetworkContext()  # monitoring, lepton-system, app.kubernetes.io/name=lepton-operator
    flagged = options("--monitoring-namespace", "observability", "--operator-pod-labels", "app=lepton,tier=control")
    assert flagged.network == NetworkContext("observability", "lepton-system", {"app": "lepton", "tier": "control"})
    monkeypatch.setenv(config.OPERATOR_NAMESPACE_ENV, "platform")  # the Deployment's fieldRef
    monkeypatch.setenv(config.MONITORING_NAMESPACE_ENV, "prom")
    assert options().network == NetworkContext("prom", "platform")
    assert options("--monitoring-namespace", "obs").network.monitoring_namespace == "obs"  # the flag wins


@pytest.mark.parametrize("argv", [["--metrics-port", "0"], ["--health-port", "70000"], ["--metrics-port", "http"],
                                  ["--priority", "high"], ["--operator-pod-labels", "app"], ["--bogus"]])  # fmt: skip
def test_bad_flags_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["run", *argv])
    assert exited.value.code == 2
    assert "usage: lepton-operator" in capsys.readouterr().err


def test_main_hands_the_options_to_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[OperatorOptions] = []

    def fake_run(opts: OperatorOptions) -> int:
        seen.append(opts)
        return 0

    monkeypatch.setattr(runner, "run", fake_run)
    assert cli.main(["run", "--namespace", "n1", "--priority", "3", "--standalone"]) == 0
    assert seen == [OperatorOptions(namespaces=("n1",), priority=3, standalone=True)]


def test_other_commands_do_not_load_kopf() -> None:
    code = "import sys; from lepton_operator import cli; cli.main(['version']); print('kopf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_run_is_listed_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    assert "run" in capsys.readouterr().out
