"""``lepton-operator``: the one entry point (run the operator, run an activator, generate CRDs, version).

Sub-commands are thin: they parse flags and call into ``crdgen``, the
controllers' ``runner`` or the ``activator``; nothing here holds logic worth
testing on its own. ``activator`` is what the activator pods of scale-to-zero
InferenceServices run (``render.activator.deployment``).
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_operator import crdgen

if TYPE_CHECKING:
    from lepton_operator.controllers.config import OperatorOptions


def package_version() -> str:
    try:
        return version("lepton")
    except PackageNotFoundError:  # running from a source tree
        return "0.0.0+source"


def _crds(args: argparse.Namespace) -> int:
    directory = Path(args.output_dir)
    if args.check:
        stale = crdgen.stale_files(directory)
        if stale:
            print(f"stale generated CRDs in {directory}: {', '.join(stale)}; run `lepton-operator crds`")
            return 1
        print(f"{directory} is up to date")
        return 0
    for path in crdgen.write(directory):
        print(f"wrote {path}")
    return 0


def run_options(args: argparse.Namespace) -> OperatorOptions:
    """The operator options from parsed ``run`` flags."""
    from lepton_operator.controllers.config import OperatorOptions, network_context  # noqa: PLC0415

    fields: dict[str, Any] = {
        "namespaces": tuple(args.namespace),
        "metrics_port": args.metrics_port,
        "health_port": args.health_port,
        "standalone": args.standalone,
        "peering_name": args.peering_name,
        "verbose": args.verbose,
        "prometheus_url": args.prometheus_url,
        "autoscale_interval": args.autoscale_interval,
        "progress_interval": args.progress_interval,
        "network": network_context(args.monitoring_namespace, args.operator_pod_labels),
    }
    if args.priority is not None:
        fields["priority"] = args.priority
    return OperatorOptions(**fields)


def _run(args: argparse.Namespace) -> int:
    # Imported here so that `crds` and `version` do not load kopf.
    from lepton_operator.controllers import runner  # noqa: PLC0415

    return runner.run(run_options(args))


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (1-65535)")
    return port


def _labels(text: str) -> dict[str, str]:
    from lepton_operator.render.network import parse_labels  # noqa: PLC0415 - only `run` parses labels

    try:
        return parse_labels(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run the operator (kubeconfig from KUBECONFIG, ~/.kube/config or the in-cluster service account)",
    )
    run.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="serve this namespace (repeatable; kopf globs such as 'team-*' allowed); default: all namespaces",
    )
    run.add_argument(
        "--metrics-port", type=_port, default=8080, help="port of the Prometheus /metrics endpoint (default: 8080)"
    )
    run.add_argument(
        "--health-port", type=_port, default=8081, help="port of the /healthz liveness endpoint (default: 8081)"
    )
    run.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority: of the operators sharing a peering name, only the highest acts"
        " (default: ranked by start time, below 10^16, so the oldest replica acts and none tie)",
    )
    run.add_argument(
        "--peering-name",
        default="lepton-operator",
        help="ClusterKopfPeering shared by the replicas (default: lepton-operator)",
    )
    run.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: act even if another operator runs (development only)",
    )
    run.add_argument(
        "--prometheus-url",
        default=None,
        help="Prometheus the InferenceService autoscaler queries when a service names none (e.g. http://prometheus:9090)",
    )
    run.add_argument(
        "--autoscale-interval",
        type=float,
        default=2.0,
        help="seconds between two autoscaling rounds over all InferenceServices (default: 2)",
    )
    run.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        help="seconds between two reads of a running trainer's or preparer's /progress (default: 10)",
    )
    run.add_argument(
        "--monitoring-namespace",
        default=None,
        metavar="NS",
        help="namespace whose pods may scrape the metrics ports of Lepton's pods (NetworkPolicies)"
        " (default: $LEPTON_MONITORING_NAMESPACE, else monitoring)",
    )
    run.add_argument(
        "--operator-pod-labels",
        type=_labels,
        default=None,
        metavar="KEY=VALUE,...",
        help="labels of the operator's pods, which NetworkPolicies let read the progress ports"
        " (default: $LEPTON_OPERATOR_POD_LABELS, else app.kubernetes.io/name=lepton-operator);"
        " their namespace is $POD_NAMESPACE, else lepton-system",
    )
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    run.set_defaults(handler=_run)


def _activator(args: argparse.Namespace) -> int:
    from lepton_operator import activator  # noqa: PLC0415 - only activator pods need aiohttp's server

    grpc = None
    if args.grpc_backend:
        host, _, port = args.grpc_backend.rpartition(":")
        grpc = (host, _port(port))
    config = activator.Config(
        backend=args.backend,
        grpc_backend=grpc,
        hold_timeout=args.hold_timeout_seconds,
        max_held=args.max_held_requests,
        probe_interval=args.probe_interval_seconds,
    )
    return activator.run(config, args.host, args.port, args.metrics_port, args.grpc_port if grpc else None)


def _add_activator(commands: Any) -> None:
    from lepton_operator.render import activator as rendered  # noqa: PLC0415 - what the rendered pods pass
    from lepton_operator.render import inference  # noqa: PLC0415

    act = commands.add_parser(
        "activator",
        help="hold requests of a scale-to-zero InferenceService until a replica is ready (see lepton_operator.activator)",
    )
    act.add_argument("--backend", required=True, help="base URL of the Triton pods' HTTP endpoint (their Service)")
    act.add_argument("--grpc-backend", default=None, metavar="HOST:PORT", help="their gRPC endpoint (relayed as TCP)")
    act.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")  # noqa: S104 - a pod's server
    act.add_argument("--port", type=_port, default=inference.HTTP_PORT, help="HTTP port (default: %(default)s)")
    act.add_argument("--grpc-port", type=_port, default=inference.GRPC_PORT, help="gRPC port (default: %(default)s)")
    act.add_argument(
        "--metrics-port", type=_port, default=inference.METRICS_PORT, help="/metrics and /healthz (default: %(default)s)"
    )
    act.add_argument(
        "--hold-timeout-seconds", type=float, default=rendered.HOLD_TIMEOUT_SECONDS,
        help="longest a request waits for a ready replica before a 503 (default: %(default)s)",
    )  # fmt: skip
    act.add_argument(
        "--max-held-requests", type=int, default=rendered.MAX_HELD_REQUESTS,
        help="most requests held at once; more get a 503 at once (default: %(default)s)",
    )  # fmt: skip
    act.add_argument(
        "--probe-interval-seconds", type=float, default=rendered.PROBE_INTERVAL_SECONDS,
        help="seconds between two readiness probes of the backend while none is ready (default: %(default)s)",
    )  # fmt: skip
    act.set_defaults(handler=_activator)


def _version(_: argparse.Namespace) -> int:
    print(package_version())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lepton-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_activator(commands)
    crds = commands.add_parser("crds", help="generate crds/*.yaml from the API models")
    crds.add_argument("--output-dir", default="crds", help="directory to write (default: crds)")
    crds.add_argument("--check", action="store_true", help="fail if the directory is stale instead of writing")
    crds.set_defaults(handler=_crds)
    ver = commands.add_parser("version", help="print the version")
    ver.set_defaults(handler=_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
