import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Embedded, offline defaults for every test process (and the subprocesses and Ray workers they start).
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["DSPY_CACHEDIR"] = str(ROOT / "outputs" / ".test-dspy-cache")  # never the home folder


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` from the project root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def simulator():
    """One simulator for tests that only need a live endpoint (each run may also start its own)."""
    from gepa_lab.lm.sim.launch import start_simulator

    with start_simulator(max_in_flight=8) as sim:
        yield sim
