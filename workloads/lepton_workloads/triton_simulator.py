"""A Triton stand-in for tests: Triton's HTTP and gRPC protocols, metric names, restricted APIs and gRPC TLS, on a real model.

Triton itself cannot run on the test machines, so the autoscaling e2e runs
this simulator, one process per Ready replica. It is *not* Triton. It serves
what Lepton and ``tritonclient`` use, the way Triton serves it, in modules by
idea:

- ``triton_model``: the core both protocols share. The model of a Triton
  repository (TorchScript with torch, ONNX with ONNX Runtime, by the platform of
  its ``config.pbtxt``), Triton's scheduling (``--concurrency`` instances
  execute at a time, the rest wait in the queue; each execution takes at least
  ``--service-time-ms``, a GPU model's latency on CPU), Triton's counters, and
  Triton's error codes.
- ``triton_http``: the HTTP/REST (KServe v2) endpoints on ``--http-port``,
  routed as Triton routes them. Like Triton's, this endpoint has no TLS.
- ``triton_grpc``: Triton's gRPC service (the stubs ``tritonclient.grpc``
  ships) on ``--grpc-port``, with Triton's TLS and mutual TLS.
- ``triton_restricted``: Triton's restricted APIs (``--http-restricted-api``,
  ``--grpc-restricted-protocol``): the same refusals, status codes and messages.

``/metrics`` (on the metrics port, as Triton) exports Triton's names with
Triton's semantics: cumulative counters without a ``_total`` suffix
(``nv_inference_request_success``, ``nv_inference_request_failure``,
``nv_inference_count``, ``nv_inference_exec_count``,
``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``,
``nv_inference_compute_infer_duration_us``) and the
``nv_inference_pending_request_count`` gauge (requests received and not yet
executing), labelled ``model`` and ``version``; HTTP and gRPC requests count
alike.

Command lines: its own (``--model-repository DIR --model NAME --host ...``;
gRPC only with ``--grpc-port``; the restriction and TLS flags are Triton's, with
Triton's syntax), and, after :data:`TRITONSERVER_FLAGS`, the ``tritonserver``
command line the operator renders for an InferenceService's replicas. The
simulator image (``images/triton-simulator``) installs a ``tritonserver`` script
that passes its arguments that way, so a local overlay can swap the image of an
InferenceService without changing anything else: the repository's one model is
served on ``--http-port``, ``--grpc-port`` (Triton's default 8001; none with
``--allow-grpc=false``) and ``--metrics-port`` on every address, behind the
same restrictions and TLS, and the flags that have nothing to simulate (exit
timeout, logging...) are named on stdout and ignored.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lepton_workloads import triton_grpc, triton_restricted
from lepton_workloads.triton_http import serve
from lepton_workloads.triton_model import Model

__all__ = ["TRITONSERVER_FLAGS", "Model", "main", "serve", "tritonserver_args"]

#: First argument of a ``tritonserver`` command line handed to the simulator.
TRITONSERVER_FLAGS = "--tritonserver-flags"
#: Triton's default gRPC port (``--grpc-port``).
TRITON_GRPC_PORT = "8001"


def triton_bool(text: str) -> bool:
    """A boolean flag value as Triton's ``ParseOption<bool>`` reads it (``true/on/1``, ``false/off/0``, any case)."""
    if text.lower() in ("true", "on", "1"):
        return True
    if text.lower() in ("false", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"invalid value for bool option: {text}")


class _SslFlag(argparse.Action):
    """``--grpc-use-ssl`` and ``--grpc-use-ssl-mutual`` in order, as Triton: mutual turns SSL on, whatever its value."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None) -> None:
        on = triton_bool(str(values))
        if self.dest == "grpc_use_ssl_mutual":
            namespace.grpc_use_ssl = True
        setattr(namespace, self.dest, on)


def add_triton_flags(parse: argparse.ArgumentParser) -> None:
    """The flags the simulator takes under Triton's own names and syntax: restrictions and gRPC TLS."""
    for flag in (triton_restricted.HTTP_FLAG, triton_restricted.GRPC_FLAG):
        parse.add_argument(f"--{flag}", action="append", default=[], metavar="<apis>:<key>=<value>")
    parse.add_argument("--grpc-use-ssl", action=_SslFlag, default=False, metavar="BOOL")
    parse.add_argument("--grpc-use-ssl-mutual", action=_SslFlag, default=False, metavar="BOOL")
    for flag in ("--grpc-server-cert", "--grpc-server-key", "--grpc-root-cert"):
        parse.add_argument(flag, default="", metavar="PEM")


def triton_flags(args: argparse.Namespace) -> list[str]:
    """``add_triton_flags``' values, back to flags with the same meaning."""
    flags = [f"--{triton_restricted.HTTP_FLAG}={value}" for value in args.http_restricted_api]
    flags += [f"--{triton_restricted.GRPC_FLAG}={value}" for value in args.grpc_restricted_protocol]
    if args.grpc_use_ssl_mutual:
        flags.append("--grpc-use-ssl-mutual=true")
    elif args.grpc_use_ssl:
        flags.append("--grpc-use-ssl=true")
    for name in ("server_cert", "server_key", "root_cert"):
        if value := getattr(args, f"grpc_{name}"):
            flags.append(f"--grpc-{name.replace('_', '-')}={value}")
    return flags


def tritonserver_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Triton's flags -> (the simulator's arguments, the Triton flags it ignores).

    The model is the only directory of the repository that has a ``config.pbtxt``
    (the operator stages exactly one); more or none is an error, as in Triton's
    explicit model control.
    """
    parse = argparse.ArgumentParser(prog="tritonserver (Lepton's Triton simulator)", add_help=False, allow_abbrev=False)
    parse.add_argument("--model-repository", required=True)
    parse.add_argument("--http-port", default="8000")
    parse.add_argument("--metrics-port", default="8002")
    parse.add_argument("--http-address", default="0.0.0.0")  # noqa: S104 - a server in a pod
    parse.add_argument("--grpc-port", default=TRITON_GRPC_PORT)
    parse.add_argument("--allow-grpc", type=triton_bool, default=True)
    add_triton_flags(parse)
    args, ignored = parse.parse_known_args(list(argv))
    repository = Path(args.model_repository)
    models = sorted(d.name for d in repository.iterdir() if (d / "config.pbtxt").is_file()) if repository.is_dir() else []
    if len(models) != 1:
        raise SystemExit(f"triton_simulator: {repository} must hold exactly one model with a config.pbtxt, found {models}")
    own = [f"--model-repository={repository}", f"--model={models[0]}", f"--host={args.http_address}",
           f"--http-port={args.http_port}", f"--metrics-port={args.metrics_port}"]  # fmt: skip
    if args.allow_grpc:
        own.append(f"--grpc-port={args.grpc_port}")
    return own + triton_flags(args), ignored


def grpc_tls(args: argparse.Namespace) -> triton_grpc.Tls | None:
    """The gRPC TLS the flags ask for, or None."""
    if not args.grpc_use_ssl:
        return None
    if not (args.grpc_server_cert and args.grpc_server_key):
        raise SystemExit("triton_simulator: --grpc-use-ssl needs --grpc-server-cert and --grpc-server-key")
    root = Path(args.grpc_root_cert) if args.grpc_root_cert else None
    return triton_grpc.Tls(Path(args.grpc_server_cert), Path(args.grpc_server_key), root, args.grpc_use_ssl_mutual)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [TRITONSERVER_FLAGS]:
        argv, ignored = tritonserver_args(argv[1:])
        if ignored:
            print(f"triton_simulator: not Triton; ignoring {' '.join(ignored)}", flush=True)
    parse = argparse.ArgumentParser(prog="triton_simulator", description=(__doc__ or "").split("\n")[0])
    parse.add_argument("--model-repository", required=True)
    parse.add_argument("--model", required=True)
    parse.add_argument("--host", default="127.0.0.1")
    parse.add_argument("--http-port", type=int, default=8000)
    parse.add_argument("--metrics-port", type=int, default=8002)
    parse.add_argument("--grpc-port", type=int, default=None, help="serve Triton's gRPC protocol too (off by default)")
    parse.add_argument("--service-time-ms", type=float, default=20.0)
    parse.add_argument("--concurrency", type=int, default=1)
    add_triton_flags(parse)
    args = parse.parse_args(argv)
    try:
        http_restrictions = triton_restricted.parse_http(args.http_restricted_api)
        grpc_restrictions = triton_restricted.parse_grpc(args.grpc_restricted_protocol)
    except ValueError as error:  # Triton refuses to start on these too
        raise SystemExit(f"triton_simulator: {error}") from error
    torch.set_num_threads(1)
    model = Model(Path(args.model_repository), args.model, args.service_time_ms / 1000, args.concurrency)
    servers = serve(model, args.http_port, args.metrics_port, args.host, http_restrictions)
    ports = [server.server_address[1] for server in servers]
    grpc_server = None
    if args.grpc_port is not None:
        grpc_server, grpc_port = triton_grpc.serve(model, args.grpc_port, args.host, grpc_restrictions, grpc_tls(args))
        ports.append(grpc_port)
    print(f"triton_simulator: serving {args.model} on {args.host} ports {ports}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    if grpc_server is not None:
        grpc_server.stop(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
