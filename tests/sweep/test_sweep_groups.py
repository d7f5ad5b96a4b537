"""One small sweep over two tasks (banking77 and example_csv, through sweep.groups) x two simulator configurations
(a tied axis): four trials, not eight; a champion per task, registered under its own name, whose scores are its
trial's; a leaderboard and a report grouped by task; the two simulators compared per task with paired intervals;
and a resume that runs the combinations saved with the sweep, whatever the command line composes now."""
import json

import pytest
from mlflow.tracking import MlflowClient

from gepa_lab.results import query
from gepa_lab.results.report import DATA_ID
from tests.conftest import run_cli

TASKS = {"banking77", "example_csv"}
# small but real: banking77's 150 val examples and one GEPA iteration with 40 examples to learn from
SMALL = ["tracking.wandb.enabled=false", "optimizer.reflection_minibatch_size=40", "eval.test_limit=200"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("groups") / "tasks_x_sims"
    result = run_cli("gepa_lab.sweep", "sweep=tasks_x_sims", f"output_dir={out}", *SMALL, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return {"out": out, "stdout": result.stdout, "summary": json.loads((out / "summary.json").read_text())}


def trials(out) -> list[dict]:
    return query.sql(query.connect([out]), "SELECT * FROM trials ORDER BY task, trial_id").dicts()


def test_a_tied_axis_gives_pairs_and_groups_give_every_task(sweep):
    rows = trials(sweep["out"])
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    seen = set()
    for r in rows:
        config = json.loads(r["config_json"])
        sim = config["lm"]["sim"]
        seen.add((r["task"], sim["seed"], sim["latency_ms"]))
        params = config["params"]
        assert params["groups"].startswith("task=") and params["tied.simulator"] in ("steady", "slower")
        assert (params["lm.sim.seed"], params["lm.sim.latency_ms"]) == (sim["seed"], sim["latency_ms"])
    assert seen == {(task, 0, 0.0) for task in TASKS} | {(task, 1, 5.0) for task in TASKS}


def test_one_champion_per_task_with_its_trials_scores(sweep):
    s = sweep["summary"]
    assert set(s["winners"]) == TASKS and s["best_trial_id"] is None  # no winner across tasks
    by_id = {r["trial_id"]: r for r in trials(sweep["out"])}
    for task, winner in s["winners"].items():
        row = by_id[winner["best_trial_id"]]
        assert row["task"] == task
        # the task's best on val among its own trials
        assert row["best_val_score"] == max(r["best_val_score"] for r in by_id.values() if r["task"] == task)
        for key in ("best_val_score", "best_test_score", "seed_val_score", "seed_test_score"):
            assert winner[key] == row[key], (task, key)
        model = winner["registered_model"]
        assert model["name"] == f"gepa_lab-{task}" and model["trial_id"] == winner["best_trial_id"]
        assert model["alias"] == "champion" and model["load_back_ok"], model
        registry = MlflowClient(model["registry_uri"], registry_uri=model["registry_uri"])
        version = registry.get_model_version_by_alias(model["name"], "champion")
        assert str(version.version) == str(model["version"])
        assert float(version.tags["best_test_score"]) == row["best_test_score"]
        assert f"{task}: best trial {winner['best_trial_id']}" in sweep["stdout"]
    for task in TASKS:  # real gains on the simulator, on val and on test
        winner = s["winners"][task]
        assert winner["best_val_score"] > winner["seed_val_score"], (task, winner)
        assert winner["best_test_score"] > winner["seed_test_score"], (task, winner)
    # example_csv's 45 test examples: the paired 95% interval of the test gain lies above 0
    assert s["winners"]["example_csv"]["test_gain_ci95_above_zero"] is True, s["winners"]["example_csv"]


def test_leaderboard_ranks_within_each_task(sweep):
    board = query.leaderboard(query.connect([sweep["out"]])).dicts()
    assert [(r["task"], r["rank"]) for r in board] == [("banking77", 1), ("banking77", 2), ("example_csv", 1),
                                                      ("example_csv", 2)]
    for row in board:
        assert row["tied.simulator"] in ("steady", "slower")
        if row["rank"] == 1:
            assert row["trial_id"] == sweep["summary"]["winners"][row["task"]]["best_trial_id"]


def test_the_two_simulators_are_compared_per_task_with_paired_intervals(sweep):
    con = query.connect([sweep["out"]])
    table = query.lm_comparison(con).dicts()
    assert sorted((r["task"], r["lm"]) for r in table) == sorted(
        (task, lm) for task in TASKS for lm in ("lm.sim.latency_ms=0.0, lm.sim.seed=0", "lm.sim.latency_ms=5.0, lm.sim.seed=1"))
    for task in TASKS:
        rows = [r for r in table if r["task"] == task]
        winner = next(r for r in rows if r["trial_id"] == sweep["summary"]["winners"][task]["best_trial_id"])
        other = next(r for r in rows if r is not winner)
        assert winner["vs_winner"] is None
        assert other["vs_winner"] == pytest.approx(other["best_test_score"] - winner["best_test_score"])
        assert other["vs_winner_ci95_low"] <= other["vs_winner"] <= other["vs_winner_ci95_high"]
    # the same comparison from the results CLI, one task at a time
    shown = run_cli("gepa_lab.results", "lms", str(sweep["out"]), "--task", "example_csv", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == [r for r in table if r["task"] == "example_csv"]
    page = (sweep["out"] / "report.html").read_text()
    data = json.loads(page.split(f'id="{DATA_ID}">', 1)[1].split("</script>", 1)[0].replace("<\\/", "</"))
    assert data["lm_comparison"]["rows"] == [list(r) for r in query.lm_comparison(con).rows]
    assert {w["task"] for w in data["winners"]} == TASKS and all(w["lineage"] for w in data["winners"])
    assert 'id="headline-banking77"' in page and 'id="lineage-example_csv"' in page


def test_a_resume_runs_the_combinations_saved_with_the_sweep(sweep):
    """Rerun with the same output_dir but a command line that composes one task only: the saved combinations run
    (all four trials are there, finished: none is added or run again)."""
    out = sweep["out"]
    before = [(r["trial_id"], r["ended_at"], r["best_test_score"]) for r in trials(out)]
    saved = json.loads((out / "sweep_variants.json").read_text())["variants"]
    assert sorted(saved) == ["task=banking77,lm@reflection_lm=sim", "task=classify,lm@reflection_lm=sim"]
    result = run_cli("gepa_lab.sweep", "sweep=tasks_x_sims", f"output_dir={out}", *SMALL,
                     "sweep.groups.task=[banking77]", "tracking.mlflow.enabled=false", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "resuming with those saved in" in " ".join(result.stderr.split())
    assert [(r["trial_id"], r["ended_at"], r["best_test_score"]) for r in trials(out)] == before
    assert set(json.loads((out / "summary.json").read_text())["winners"]) == TASKS
