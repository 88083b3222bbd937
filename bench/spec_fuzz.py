"""Spec fuzzing at scale: N objects from the CRDs' schemas, made hostile, created while the operator runs.

The campaign of ``e2e/tests/test_spec_fuzz.py`` (``localcluster.specfuzz``), with more objects.
It starts (or reuses) the local cluster, runs the operator from this checkout as a process
serving only the benchmark's namespace (pods go to kwok nodes), creates the objects one by one,
waits (bounded) for every accepted one to get a phase or a reasoned condition, and writes the
counts as JSON (``--out``):

* ``refused_with_message`` / ``refused_without_message``: the API server's refusals;
* ``accepted_settled``: accepted, and given a phase or a condition with a reason;
* ``stuck``: accepted, and still without either at the deadline;
* ``reconcile_error``: accepted, and still looping in ``ReconcileError`` at the deadline;
* ``operator_exceptions``: tracebacks in the operator's log during the run;
* ``by_origin`` (schema, mutated, example) and a few examples of each outcome.

    PYTHONPATH=operator:workloads:e2e python bench/spec_fuzz.py --count 10000

Objects are created and settled in batches (``--batch``), each deleted before the next, so the
cluster holds at most one batch at a time; the JSON is rewritten after every batch
(``objects_done``), so a run stopped early still reports its real N. Not a test: report the real N
with the counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

import kubernetes

import localcluster
from localcluster import config, specfuzz
from localcluster.lepton import install_crds, start_operator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--settle", type=float, default=180.0, help="seconds a batch's accepted objects have to settle")
    parser.add_argument("--out", type=Path, default=Path("bench/results/spec_fuzz.json"))
    args = parser.parse_args()

    started = time.time()
    objects = specfuzz.objects(args.count, args.seed)
    generated = time.time() - started
    print(f"{len(objects)} objects generated in {generated:.0f} s", flush=True)
    cluster = localcluster.up()
    kubectl = cluster.kubectl()
    install_crds(kubectl)
    localcluster.ensure_nodes(kubectl, timeout=300)
    namespace = f"bench-fuzz-{uuid.uuid4().hex[:6]}"
    kubectl.create(config.kwok_namespace(namespace))
    log = Path(f"/tmp/{namespace}-operator.log")
    operator = start_operator(cluster.kubeconfig, log, extra_args=("--namespace", namespace))
    client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    campaign = specfuzz.Campaign(kubernetes.client.CustomObjectsApi(client), namespace)

    def write(done: int) -> None:
        """The counts so far (rewritten after every batch, so a stopped run still reports its real N)."""
        campaign.counts.operator_exceptions = len(specfuzz.operator_exceptions(log.read_text(errors="replace")))
        result: dict[str, Any] = {
            "shape": {"count": args.count, "seed": args.seed, "batch": args.batch, "settle_s": args.settle},
            "objects_done": done,
            **dataclasses.asdict(campaign.counts),
            "operator_alive": operator.alive(),
            "generation_s": round(generated, 1),
            "total_s": round(time.time() - started, 1),
            "operator_log": str(log),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}), flush=True)

    try:
        for first in range(0, len(objects), args.batch):
            campaign.accepted.clear()
            batch = objects[first : first + args.batch]
            for item in batch:
                campaign.create(item)
            campaign.settle(args.settle)
            campaign.delete_all(300)
            write(first + len(batch))
    finally:
        operator.stop()
        kubectl("delete", "namespace", namespace, "--wait=false")


if __name__ == "__main__":
    main()
