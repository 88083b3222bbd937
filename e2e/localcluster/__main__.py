"""``python -m localcluster build|up|down|status|kubeconfig|kubectl-path`` (with ``PYTHONPATH=e2e``).

Progress goes to stderr; ``kubeconfig`` and ``kubectl-path`` print only a path on stdout so a
Makefile can write ``KUBECTL := $(shell PYTHONPATH=e2e python -m localcluster kubectl-path)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from localcluster import build, cluster, images, lepton_images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the pinned binaries and (local cluster) the images that are not cached yet")
    p_up = sub.add_parser("up", help="start or reuse the cluster, wait until usable")
    p_up.add_argument("--cpu-nodes", type=int, default=None, help="default: $LEPTON_E2E_CPU_NODES or 2")
    p_up.add_argument("--gpu-nodes", type=int, default=None, help="default: $LEPTON_E2E_GPU_NODES or 4")
    p_up.add_argument("--timeout", type=float, default=120.0)
    sub.add_parser("down", help="delete the cluster")
    sub.add_parser("status", help="print mode, reachability, nodes and cached binaries as JSON")
    sub.add_parser("kubeconfig", help="print the kubeconfig path")
    sub.add_parser("kubectl-path", help="print the path of the pinned kubectl (building it if needed)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        if args.command == "build":
            local = cluster.cluster_mode() == cluster.MODE_LOCAL
            with ThreadPoolExecutor(1) as pool:
                # The images need none of the binaries: build them meanwhile (mostly downloads and
                # disk while Go compiles). kind and other clusters get images their own way (README).
                images_built = pool.submit(lepton_images.ensure_images) if local else None
                times = build.ensure_built(build.LOCAL_GROUPS) if local else build.ensure_built()
                build.log("all binaries cached" if not times else
                          "built " + ", ".join(f"{g} in {s:.0f} s" for g, s in times.items()))
                if images_built is not None:
                    images_built.result()
        elif args.command == "up":
            c = cluster.up(args.cpu_nodes, args.gpu_nodes, args.timeout)
            print(c.kubeconfig)
        elif args.command == "down":
            existed = cluster.down()
            build.log(f"cluster deleted in {time.monotonic() - start:.1f} s" if existed else "no cluster to delete")
        elif args.command == "status":
            print(json.dumps(cluster.status(), indent=2))
        elif args.command == "kubeconfig":
            print(cluster.kubeconfig_path())
        elif args.command == "kubectl-path":
            print(cluster.kubectl_path())
    except (build.BuildError, cluster.ClusterError, images.ImageError) as exc:
        print(f"[localcluster] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
