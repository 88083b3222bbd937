"""``python -m lepton_workloads``: lists the entry points this image carries."""

from __future__ import annotations

import pkgutil
import sys

import lepton_workloads

ENTRY_POINTS = {
    "prepare": "prepare a LeptonDataset into shards",
    "train": "PyTorch DDP trainer (under torchrun)",
    "stage_model": "stage a Triton model repository (an InferenceService's init container)",
    "triton_simulator": "a stand-in speaking Triton's HTTP and gRPC protocols and metrics (tests, local demo)",
    "demo_data": "generate (and serve over HTTP) the quickstart's multimodal sample data",
}


def main() -> int:
    present = {module.name for module in pkgutil.iter_modules(lepton_workloads.__path__)}
    print("usage: python -m lepton_workloads.<entry point> --help\n")
    for name, purpose in ENTRY_POINTS.items():
        state = "" if name in present else "  (not in this version)"
        print(f"  lepton_workloads.{name:10s} {purpose}{state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
