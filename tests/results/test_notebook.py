"""notebooks/explore_results.ipynb: valid nbformat 4 JSON, no outputs committed, and it runs in a Jupyter kernel on
results (a real sweep's: tests/sweep/test_sweep_e2e.py)."""
from __future__ import annotations

import json
from pathlib import Path

from tests.support.notebooks import EXPLORE_NOTEBOOK as NOTEBOOK, outputs, run_notebook


def test_notebook_is_clean_nbformat():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5 and "kernelspec" in nb["metadata"]
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == len(set(ids))
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebook_runs_in_a_kernel_on_results(sweep_dir: Path):
    nb = run_notebook(NOTEBOOK, [sweep_dir])
    code = [c for c in nb.cells if c.cell_type == "code"]
    printed = "".join(text for c in code for text in outputs(c, "stream"))
    assert f"opened {sweep_dir}" in printed
    assert "best trial t-c: val 0.400 -> 0.600" in printed
    assert f"{sweep_dir / 'plots' / 'progress.png'}\n{sweep_dir / 'plots' / 'seed_vs_winner.png'}" in printed
    assert (sweep_dir / "plots" / "progress.png").exists()
    # the two PNGs of plot_all, then the interval plot drawn from the Polars leaderboard
    assert sum(len(outputs(c, "image/png")) for c in code) == 3
