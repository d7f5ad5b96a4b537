"""Fixtures of tests/results: a sweep's results written by the real ResultsWriter."""
from __future__ import annotations

from pathlib import Path

import pytest

from results_data import write_trial


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A sweep of four trials: t-b and t-c tie on val (0.6), t-c spent fewer metric calls; t-d failed."""
    out = tmp_path / "sweep-demo"
    write_trial(out, "t-a", [0.4, 0.5], [10, 40], params={"optimizer.seed": 0}, test=(0.3, 0.45))
    write_trial(out, "t-b", [0.4, 0.45, 0.6], [10, 40, 90], params={"optimizer.seed": 1}, test=(0.3, 0.55))
    write_trial(out, "t-c", [0.4, 0.6], [10, 50], params={"optimizer.seed": 2}, test=(0.3, 0.5))
    write_trial(out, "t-d", [0.4], [10], params={"optimizer.seed": 3}, fail=True)
    return out
