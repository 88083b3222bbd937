"""``lepton-operator``: the one entry point (run the operator, generate CRDs, version).

Sub-commands are thin: they parse flags and call into ``crdgen`` or the
controllers' ``runner``; nothing here holds logic worth testing on its own.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lepton_operator import crdgen


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


def _version(_: argparse.Namespace) -> int:
    print(package_version())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lepton-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
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
