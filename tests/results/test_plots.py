"""The plots, drawn in-process from real results."""
from __future__ import annotations

from pathlib import Path

from gepa_lab.results.plots import plot_all, plot_progress, plot_seed_vs_winner, trials_with_labels
from gepa_lab.results.query import open_results


def test_labels_carry_varied_params_and_status(sweep_dir: Path):
    labels = [r["label"] for r in trials_with_labels(open_results(sweep_dir))]
    assert labels == ["t-c (seed=2)", "t-b (seed=1)", "t-a (seed=0)", "t-d (seed=3) [failed]"]


def test_plots_have_data_only_when_there_is_some(tmp_path: Path, sweep_dir: Path):
    con = open_results(sweep_dir)
    assert plot_progress(con, tmp_path / "p.png").stat().st_size > 10_000
    assert plot_seed_vs_winner(con, tmp_path / "s.png").stat().st_size > 10_000
    (tmp_path / "fresh" / "results" / "trials").mkdir(parents=True)
    assert plot_all(open_results(tmp_path / "fresh"), tmp_path / "fresh" / "plots") == []
