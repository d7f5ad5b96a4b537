"""notebooks/explore_results.ipynb: valid nbformat 4 JSON, no outputs committed, and its code runs."""
from __future__ import annotations

import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "explore_results.ipynb"


def test_notebook_is_clean_nbformat():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5 and "kernelspec" in nb["metadata"]
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == len(set(ids))
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebook_code_runs_on_results(sweep_dir: Path):
    nb = json.loads(NOTEBOOK.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert "DIRS: list[str] = []" in code[0]
    code[0] = code[0].replace("DIRS: list[str] = []", f"DIRS = [{str(sweep_dir)!r}]")
    namespace: dict = {}
    for source in code:
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    assert namespace["best"]["trial_id"] == "t-c"
    assert [p.name for p in namespace["paths"]] == ["progress.png", "seed_vs_winner.png"]
    assert (sweep_dir / "plots" / "progress.png").exists()
