"""Beyond the demo's grid, in one small sweep: Optuna TPE proposing trials, ASHA stopping weak ones early, and a
sweep-level budget that stops running trials at their next iteration and keeps later ones from starting."""
import json

from gepa_lab.results import query
from tests.conftest import run_cli

TINY = ["tracking=none", "corpus.name=banking77_tiny", "corpus.splits.train=40", "corpus.splits.val=20",
        "corpus.splits.test=20"]


def sweep(out, *overrides: str) -> dict:
    result = run_cli("gepa_lab.sweep", f"output_dir={out}", *TINY, *overrides, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads((out / "summary.json").read_text())


def test_optuna_tpe_with_asha_within_a_sweep_budget(tmp_path):
    out = tmp_path / "tpe"
    summary = sweep(out, "sweep=banking77_tpe", "sweep.num_samples=4", "optimizer.max_metric_calls=160",
                    "sweep.space.optimizer.reflection_minibatch_size={choice:[4,8]}", "sweep.asha.grace_metric_calls=50",
                    "sweep.budget.metric_calls=200")
    trials = summary["trials"]
    assert trials["total"] == 4 and trials["completed"] + trials["stopped"] + trials["skipped"] == 4, trials
    assert trials["skipped"] >= 1, trials  # the budget was spent before the last trial could start
    con = query.connect([out])
    rows = con.execute("SELECT status, config_json, metric_calls FROM trials WHERE status != 'skipped'").fetchall()
    for status, config, calls in rows:
        assert set(json.loads(config)["params"]) == {"optimizer.seed", "optimizer.reflection_minibatch_size",
                                                     "optimizer.candidate_selection_strategy", "optimizer.use_merge"}
        assert status == "stopped" or calls <= 160
    assert summary["best_trial_id"] and summary["best_val_score"] >= summary["seed_val_score"]  # what was found is kept
