"""A closed-loop ``tritonclient`` load that runs *inside a pod*, and prints one JSON line of results.

Why a pod: the local cluster's NetworkPolicy enforcer (kube-router) always admits traffic from
the node itself, so a client on the host (or the forwarder it goes through) neither pays for nor
tests a policy. ``bench/security_overhead.py`` mounts this file from a ConfigMap into a pod of the
workloads image (which has ``tritonclient`` and ``numpy``) and runs it with ``kubectl exec``:

    python closed_loop_client.py --protocol grpc --address svc:8001 --model double \\
        --concurrency 4 --seconds 20 [--key-header lepton-api-key] [--ca /load/ca.pem] [--reconnect]

``--concurrency`` threads each send the next request when the last one answered, for
``--seconds`` after ``--warmup`` seconds of the same load (not counted). Each thread keeps one
client (one connection) unless ``--reconnect``: then every request opens a new one, as a fleet of
one-shot callers would, so the connection set-up (where kube-router evaluates the policy:
established flows are accepted by conntrack) and a TLS handshake are paid per request. The API
key comes from the environment (:data:`KEY_ENV`, set from the Secret by ``secretKeyRef``), never
from the command line. Output: ``requests``, ``failed`` (and the first errors), ``seconds``,
``rps``, ``p50_ms``, ``p99_ms``.

The file imports only the standard library at module level (``numpy`` and ``tritonclient`` in
:func:`main`), so the harness on the host imports it too, for :func:`percentile`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

#: The environment variable the pod sets from the key's Secret.
KEY_ENV = "LEPTON_API_KEY"
#: Triton's prefix of a restricted gRPC protocol's metadata key (``access.ApiKey.grpc``).
GRPC_KEY_PREFIX = "triton-grpc-protocol-"
INPUT, OUTPUT = "INPUT__0", "OUTPUT__0"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values`` by rank, NaN when empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def caller(args: argparse.Namespace, key: str | None) -> Callable[[], Callable[[], None]]:
    """A factory of one-request callables for one thread: each call is one inference, checked."""
    import numpy as np  # noqa: PLC0415 - in the pod only
    import tritonclient.grpc as grpc_client  # noqa: PLC0415
    import tritonclient.http as http_client  # noqa: PLC0415

    batch = np.arange(4, dtype=np.float32).reshape(1, 4)
    expected = batch * 2 + 1
    grpc = args.protocol == "grpc"
    headers = {(GRPC_KEY_PREFIX if grpc else "") + args.key_header: key} if args.key_header and key else None

    def connect() -> Any:
        if grpc:
            return grpc_client.InferenceServerClient(args.address, ssl=bool(args.ca), root_certificates=args.ca)
        return http_client.InferenceServerClient(args.address, network_timeout=30, connection_timeout=30)

    def thread_caller() -> Callable[[], None]:
        module: Any = grpc_client if grpc else http_client
        persistent = None if args.reconnect else connect()

        def one() -> None:
            client = persistent or connect()
            try:
                given = module.InferInput(INPUT, list(batch.shape), "FP32")
                given.set_data_from_numpy(batch)
                answer = client.infer(args.model, [given], headers=headers).as_numpy(OUTPUT)
                if not np.array_equal(answer, expected):
                    raise ValueError(f"wrong answer {answer!r}")
            finally:
                if persistent is None:
                    client.close()

        return one

    return thread_caller


def run(make_caller: Callable[[], Callable[[], None]], concurrency: int, warmup: float, seconds: float) -> dict[str, Any]:
    """``concurrency`` closed loops for ``warmup`` + ``seconds``; only requests started after the warm-up count."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    start = time.monotonic() + warmup
    end = start + seconds

    def loop() -> None:
        one = make_caller()
        while (began := time.monotonic()) < end:
            try:
                one()
                if began >= start:
                    with lock:
                        latencies.append(time.monotonic() - began)
            except Exception as error:  # noqa: BLE001 - counted, the loop goes on
                if began >= start:
                    with lock:
                        errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    measured = max(time.monotonic() - start, 1e-9)
    return {"requests": len(latencies), "failed": len(errors), "errors": errors[:3], "seconds": round(measured, 2),
            "rps": round(len(latencies) / measured, 1), "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parse = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parse.add_argument("--protocol", choices=("http", "grpc"), required=True)
    parse.add_argument("--address", required=True, help="host:port of the Service (a DNS name the certificate names, with --ca)")
    parse.add_argument("--model", required=True)
    parse.add_argument("--concurrency", type=int, default=4)
    parse.add_argument("--seconds", type=float, default=20.0)
    parse.add_argument("--warmup", type=float, default=3.0)
    parse.add_argument("--key-header", default="", help=f"send the key from ${KEY_ENV} in this header")
    parse.add_argument("--ca", default=None, help="gRPC over TLS, trusting this CA file")
    parse.add_argument("--reconnect", action="store_true", help="a new connection per request")
    args = parse.parse_args(argv)
    result = run(caller(args, os.environ.get(KEY_ENV)), args.concurrency, args.warmup, args.seconds)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
