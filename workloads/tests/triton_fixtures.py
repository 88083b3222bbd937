"""Helpers for the Triton simulator's tests: a tiny exported model, made by the test itself.

The model comes from ``export.write`` (as the trainer exports), no network. The
tests' certificates come from ``localcluster.certificates``, the one CA maker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lepton_workloads import export

MODEL = "double"


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


def write_doubler(root: Path, export_format: str = "torchscript") -> Path:
    """``double`` (``INPUT__0`` FP32 ``[-1, 4]`` -> ``OUTPUT__0`` = 2x+1) in a model repository at ``root``."""
    export.write(Doubler(), (4,), root, MODEL, max_batch_size=8, export_format=export_format)
    return root


def expected(batch: np.ndarray) -> np.ndarray:
    return batch * 2 + 1
