"""Beyond the demo's grid, in one small sweep: Optuna TPE proposing trials, ASHA stopping weak ones early, and a
sweep-level budget that stops running trials at their next iteration and keeps later ones from starting. A trial
ended early still finishes cleanly: scored on test, its W&B run closed (MLflow's sink closes at the same point)."""
import json

from gepa_lab.results import query
from tests.conftest import run_cli
from tests.support.wandb_offline import runs_by_job_type
from tests.support.corpus import TINY_CORPUS

TINY = ["tracking=none", *TINY_CORPUS]


def test_optuna_tpe_with_asha_within_a_sweep_budget(tmp_path):
    out = tmp_path / "tpe"
    result = run_cli("gepa_lab.sweep", "sweep=banking77_tpe", f"output_dir={out}", *TINY_CORPUS, "sweep.num_samples=4",
                     "optimizer.max_metric_calls=160", "sweep.space.optimizer.reflection_minibatch_size={choice:[4,8]}",
                     "sweep.asha.grace_metric_calls=50", "sweep.budget.metric_calls=200",
                     "tracking.mlflow.enabled=false", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "W&B offline" in result.stdout and "MLflow" not in result.stdout  # only what this sweep wrote is listed
    summary = json.loads((out / "summary.json").read_text())
    trials = summary["trials"]
    assert trials["total"] == 4 and trials["completed"] + trials["stopped"] + trials["skipped"] == 4, trials
    assert trials["skipped"] >= 1, trials  # the budget was spent before the last trial could start
    assert trials["stopped"] >= 1, trials  # running trials ended early, by the budget or by ASHA
    con = query.connect([out])
    rows = con.execute("SELECT status, config_json, metric_calls, best_test_score, error FROM trials "
                       "WHERE status != 'skipped'").fetchall()
    for status, config, calls, test_score, reason in rows:
        assert set(json.loads(config)["params"]) == {"optimizer.seed", "optimizer.reflection_minibatch_size",
                                                     "optimizer.candidate_selection_strategy", "optimizer.use_merge"}
        assert calls <= 160 and test_score is not None  # ended early or not, it kept and scored what it found
        assert (status == "stopped") == bool(reason) and (status == "completed" or "ASHA" in reason or "budget" in reason)
    assert summary["best_trial_id"] and summary["best_val_score"] >= summary["seed_val_score"]  # what was found is kept

    runs = runs_by_job_type(out / "wandb")["trial"]  # the sweep's report has a W&B run of its own
    assert len(runs) == len(rows)  # skipped trials open no run
    assert all(r["exit_code"] == 0 for r in runs)
