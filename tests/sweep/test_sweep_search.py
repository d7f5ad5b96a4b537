"""Sweeps beyond the demo's grid, each small: Optuna TPE with ASHA early stopping, and a sweep-level budget
that stops the running trial at its next iteration and keeps later trials from starting."""
import json

from gepa_lab.results import query
from tests.conftest import run_cli

TINY = ["tracking=none", "corpus.name=banking77_tiny", "corpus.splits.train=40", "corpus.splits.val=20",
        "corpus.splits.test=20"]


def sweep(out, *overrides: str) -> dict:
    result = run_cli("gepa_lab.sweep", f"output_dir={out}", *TINY, *overrides, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads((out / "summary.json").read_text())


def test_optuna_tpe_with_asha(tmp_path):
    out = tmp_path / "tpe"
    summary = sweep(out, "sweep=banking77_tpe", "sweep.num_samples=3", "optimizer.max_metric_calls=160",
                    "sweep.space.optimizer.reflection_minibatch_size={choice:[4,8]}", "sweep.asha.grace_metric_calls=50",
                    "sweep.budget.metric_calls=null")
    trials = summary["trials"]
    assert trials["total"] == 3 and trials["completed"] + trials["stopped"] == 3, trials
    con = query.connect([out])
    params = [json.loads(c)["params"] for (c,) in con.execute("SELECT config_json FROM trials").fetchall()]
    assert all(set(p) == {"optimizer.seed", "optimizer.reflection_minibatch_size",
                          "optimizer.candidate_selection_strategy", "optimizer.use_merge"} for p in params)
    assert summary["best_trial_id"] and summary["best_val_score"] >= summary["seed_val_score"]


def test_sweep_budget_stops_the_running_trial_and_skips_the_rest(tmp_path):
    out = tmp_path / "budget"
    summary = sweep(out, "sweep=demo", "sweep.max_concurrent=1", "sweep.budget.metric_calls=100",
                    "optimizer.max_metric_calls=400", "sweep.space.optimizer.reflection_minibatch_size={grid:[4,8]}")
    trials = summary["trials"]
    assert trials["total"] == 4 and trials["completed"] >= 1 and trials["skipped"] >= 1, trials
    assert trials["completed"] + trials["skipped"] == 4
    con = query.connect([out])
    spent = [n for (n,) in con.execute("SELECT metric_calls FROM trials WHERE status = 'completed'").fetchall()]
    assert all(n < 400 for n in spent), spent  # stopped by the sweep budget, not by its own
    assert summary["best_trial_id"]  # what the stopped trial found is kept
