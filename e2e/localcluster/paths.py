"""Where the local cluster keeps its state: ``$LEPTON_STATE_DIR`` or the repo's ``.lepton/``.

Separate from ``cluster`` so that ``sharing`` can find the state directory
without importing the module that imports it.
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    """``$LEPTON_STATE_DIR`` or ``<repo>/.lepton``."""
    explicit = os.environ.get("LEPTON_STATE_DIR")
    return Path(explicit).expanduser().resolve() if explicit else repo_root() / ".lepton"
