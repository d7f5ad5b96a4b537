"""A demo-sized sweep end to end: trials on a local Ray, W&B offline runs, MLflow parent/child runs
and a champion that loads in a fresh process, results in Parquet that DuckDB agrees on, an API key
that really is used and lands nowhere, and an LM endpoint filled but never flooded."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gepa_lab.progress import with_interval
from gepa_lab.servers.simulator import start_simulator
from gepa_lab.results import query
from tests.conftest import ROOT, run_cli
from tests.support.notebooks import EXPLORE_NOTEBOOK, outputs, run_notebook
from tests.support.report_check import check_report
from tests.support.wandb_offline import logged_html, runs_by_job_type
from tests.sweep.canary import files_containing

MAX_IN_FLIGHT = 8


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "demo"
    canary = f"sk-canary-{uuid.uuid4().hex}"
    # the sweep's temp files, its local Ray's temp dir (logs, spilled objects) included, land here; short: Ray's
    # socket paths live under it
    tmp_root = Path(tempfile.mkdtemp(prefix="gl-", dir="/tmp"))
    env = {"GEPA_LAB_CANARY_KEY": canary, "TMPDIR": str(tmp_root)}
    # A simulator with far more capacity than the config allows, so its peak in-flight measures
    # how hard the sweep pushes, not the server's own limit; it rejects requests without the key.
    os.environ["GEPA_LAB_CANARY_KEY"] = canary
    try:
        with start_simulator(max_in_flight=64, latency_ms=2, api_key_env="GEPA_LAB_CANARY_KEY") as sim:
            result = run_cli(
                "gepa_lab.sweep", "sweep=demo", f"output_dir={out}",
                f"lm.api_base={sim.url}", f"reflection_lm.api_base={sim.url}",
                "lm.api_key_env=GEPA_LAB_CANARY_KEY", "reflection_lm.api_key_env=GEPA_LAB_CANARY_KEY",
                f"lm.max_in_flight={MAX_IN_FLIGHT}", f"reflection_lm.max_in_flight={MAX_IN_FLIGHT}",
                env=env, timeout=1500,
            )
            stats = sim.stats()
    finally:
        os.environ.pop("GEPA_LAB_CANARY_KEY", None)
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        yield {"out": out, "canary": canary, "stats": stats, "stdout": result.stdout, "tmp": tmp_root,
               "summary": json.loads((out / "summary.json").read_text())}
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def test_best_trial_beats_the_seed_on_val_and_test(sweep):
    s = sweep["summary"]
    assert s["trials"]["total"] == s["trials"]["completed"] == 4
    assert s["best_val_score"] > s["seed_val_score"]
    assert s["best_test_score"] > s["seed_test_score"]
    assert "where everything went" in sweep["stdout"]
    assert "W&B offline" in sweep["stdout"] and f"winner       {s['registered_model']['model_uri']}" in sweep["stdout"]


def test_duckdb_over_results_agrees_with_summary(sweep):
    con = query.connect([sweep["out"]])
    trial_id, val, test = con.execute(
        "SELECT trial_id, best_val_score, best_test_score FROM trials WHERE status = 'completed' "
        "ORDER BY best_val_score DESC, metric_calls ASC LIMIT 1").fetchone()
    s = sweep["summary"]
    assert (trial_id, val, test) == (s["best_trial_id"], s["best_val_score"], s["best_test_score"])
    assert con.execute("SELECT count(DISTINCT trial_id) FROM candidates").fetchone()[0] == 4
    assert con.execute("SELECT count(*) FROM evaluations WHERE split = 'test'").fetchone()[0] > 0
    roles = {r for (r,) in con.execute("SELECT DISTINCT role FROM lm_usage").fetchall()}
    assert roles == {"task", "reflection"}
    assert con.execute("SELECT best_trial_id FROM sweeps").fetchone()[0] == s["best_trial_id"]


def test_results_are_compacted_once_the_sweep_ends(sweep):
    """Each trial wrote a file per GEPA iteration; the driver folded them into one file per table at the end (the
    queries above read them)."""
    results = sweep["out"] / "results"
    for table in ("candidates", "evaluations", "lm_usage"):
        names = [p.name for p in (results / table).iterdir()]
        assert len(names) == 1 and names[0].startswith("_compacted-"), (table, names)
    assert len(list((results / "trials").glob("*.parquet"))) == 4  # rewritten as trials go: left as they are


def test_winner_gain_has_a_paired_interval_and_the_part_test_did_not_confirm(sweep):
    s = sweep["summary"]
    winner = json.loads((sweep["out"] / "trials" / s["best_trial_id"] / "summary.json").read_text())
    for key in ("seed_test_ci95", "best_test_ci95", "test_gain_ci95"):
        assert s[key] == winner[key] and len(s[key]) == 2 and s[key][0] <= s[key][1], key
    assert s["val_gain"] == pytest.approx(s["best_val_score"] - s["seed_val_score"])
    assert s["test_gain"] == pytest.approx(s["best_test_score"] - s["seed_test_score"])
    assert s["val_gain_unconfirmed"] == pytest.approx(s["val_gain"] - s["test_gain"])
    assert s["test_gain_ci95_above_zero"] == (s["test_gain_ci95"][0] > 0)
    stdout = " ".join(sweep["stdout"].split())  # the console may wrap long lines
    assert f"test gain {with_interval(s['test_gain'], s['test_gain_ci95'], signed=True)}" in stdout
    assert f"val gain {s['val_gain']:+.3f}" in stdout
    con = query.connect([sweep["out"]])
    assert json.loads(con.execute("SELECT summary_json FROM sweeps").fetchone()[0])["test_gain_ci95"] == s["test_gain_ci95"]
    winner_row = query.leaderboard(con).dicts()[0]
    assert [winner_row["test_gain_ci95_low"], winner_row["test_gain_ci95_high"]] == s["test_gain_ci95"]
    # which knob mattered: both swept keys, each value run by 2 of the 4 trials
    effects = run_cli("gepa_lab.results", "effects", str(sweep["out"]), "--format", "json")
    assert effects.returncode == 0, effects.stderr
    rows = json.loads(effects.stdout)
    assert {(r["key"], r["value"], r["trials"]) for r in rows} == {
        ("optimizer.seed", 0, 2), ("optimizer.seed", 1, 2),
        ("optimizer.reflection_minibatch_size", 30, 2), ("optimizer.reflection_minibatch_size", 40, 2)}
    assert all(r["test_ci95_low"] <= r["test_score"] <= r["test_ci95_high"] for r in rows)


def test_wandb_offline_run_per_trial_with_metrics(sweep):
    runs = runs_by_job_type(sweep["out"] / "wandb")
    assert set(runs) == {"trial", "report"} and len(runs["trial"]) == 4  # the report's run: below
    for run in runs["trial"]:
        assert run["group"] == sweep["out"].name and run["exit_code"] == 0
        assert run["summary"]["best_val_score"] >= run["summary"]["seed_val_score"]
        assert any("best_val" in key for row in run["history"] for key in row)  # per-iteration metrics


def test_mlflow_parent_and_child_runs_and_champion_loads_in_a_fresh_process(sweep):
    s = sweep["summary"]
    client = MlflowClient(s["tracking_uri"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert len(children) == 4 and len(parents) == 1
    model = s["registered_model"]
    assert model["alias"] == "champion"
    name = model["name"]
    registry = MlflowClient(model["registry_uri"], registry_uri=model["registry_uri"])  # the project's, beside the sweep
    assert model["registry_uri"] == f"sqlite:///{sweep['out'].resolve().parent}/registry.db"
    assert str(registry.get_model_version_by_alias(name, "champion").version) == str(model["version"])
    code = (f"import mlflow; mlflow.set_tracking_uri({model['registry_uri']!r}); "
            f"m = mlflow.dspy.load_model('models:/{name}@champion'); print(type(m).__name__)")
    # the registry saves the program with cloudpickle, which mlflow only loads when told to (docs/serving.md)
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert loaded.returncode == 0, loaded.stderr[-3000:]


def test_canary_key_was_used_and_lands_in_no_byte_of_the_output(sweep):
    stats = sweep["stats"]
    assert stats["requests_served"] > 0  # the simulator answered, so the key was sent
    leaks = files_containing(sweep["out"], sweep["canary"])
    assert not leaks, leaks
    searched = {p.suffix for p in sweep["out"].rglob("*") if p.is_file()}
    assert {".parquet", ".db", ".json", ".yaml"} <= searched
    assert list(sweep["out"].rglob("params.json")) and list((sweep["out"] / ".hydra").glob("*.yaml"))
    # nor in any file of the sweep's Ray temp dir: its logs, and the objects it spilled, if any
    ray_dirs = list(sweep["tmp"].glob("gepa_lab-ray-*"))
    assert ray_dirs and any(ray_dirs[0].rglob("*.log"))
    assert not files_containing(sweep["tmp"], sweep["canary"])


def test_endpoint_filled_across_trials_but_never_flooded(sweep):
    stats = sweep["stats"]
    per_trial_threads = MAX_IN_FLIGHT // 2
    assert per_trial_threads < stats["peak_in_flight"] <= MAX_IN_FLIGHT, stats


def test_report_of_the_sweep_equals_its_tables_and_is_logged_to_mlflow_and_wandb(sweep, tmp_path):
    out, s = sweep["out"], sweep["summary"]
    report = out / "report.html"
    page = check_report(report, out)
    assert page.data["best_trial"]["trial_id"] == s["best_trial_id"] and len(page.data["progress"]) == 4
    assert page.data["sweeps"][0]["val_gain_unconfirmed"] == s["val_gain_unconfirmed"]
    assert [row[1] for row in page.data["cache"]["rows"]] == [s["lm_cache"]["requests_saved"]]
    assert {r[0] for r in page.data["effects"]["rows"]} == {"optimizer.seed", "optimizer.reflection_minibatch_size"}
    client = MlflowClient(s["tracking_uri"])
    [parent] = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                if r.data.tags.get("gepa_lab.kind") == "sweep"]
    logged = Path(client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path)))
    assert logged.read_text() == report.read_text()
    [run] = runs_by_job_type(out / "wandb")["report"]
    assert run["group"] == out.name and run["exit_code"] == 0
    assert logged_html(run, "report") == report.read_text()
    assert run["artifacts"] == [{"name": f"report-{out.name}", "type": "report", "files": ["report.html"]}]


def test_notebook_runs_in_a_kernel_on_the_sweep(sweep):
    nb = run_notebook(EXPLORE_NOTEBOOK, [sweep["out"]])
    code = [c for c in nb.cells if c.cell_type == "code"]
    printed = "".join(text for c in code for text in outputs(c, "stream"))
    assert f"best trial {sweep['summary']['best_trial_id']}: " in printed
    assert sum(len(outputs(c, "image/png")) for c in code) == 3  # plot_all's two, and the intervals drawn from Polars
