"""Where things live: the project root (conf/, sweeps/, corpora/) and per-run output folders."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("GEPA_LAB_ROOT", Path(__file__).resolve().parent.parent))
CONF_DIR = PROJECT_ROOT / "conf"
SWEEPS_DIR = PROJECT_ROOT / "sweeps"
CORPORA_DIR = PROJECT_ROOT / "corpora"
OUTPUTS_DIR = PROJECT_ROOT / "outputs"
