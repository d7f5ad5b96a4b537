"""gepa_lab.run end to end through the LM simulator: GEPA really improves the program, a killed
run resumes, bad input is one line, a user's own program and metric plug in by import path."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gepa_lab.compose import compose
from gepa_lab.errors import GepaLabError
from gepa_lab.progress import with_interval
from gepa_lab.results.query import open_results, sql
from gepa_lab.results.stats import bootstrap_ci, paired_bootstrap_ci
from gepa_lab.run import load_run_config
from tests.conftest import ROOT, run_cli
from tests.support import generated
from tests.support.corpus import TINY_CORPUS
from tests.support.processes import tagged_env, tagged_processes


def compile_seeds(tmp_path: Path, name: str, overrides: list[str], sim, seeds=(0, 1, 2)) -> list[dict]:
    """One `python -m gepa_lab.run` per seed, all at once (a run keeps about one core busy; these machines have
    two), sharing one rollout cache as a sweep's trials do: the seed program's evaluations are answered once."""
    procs = []
    for seed in seeds:
        out = tmp_path / f"{name}{seed}"
        args = [f"output_dir={out}", "tracking=none", f"cache.dir={tmp_path / f'{name}-cache'}", f"lm.api_base={sim.url}",
                f"reflection_lm.api_base={sim.url}", *overrides, f"optimizer.seed={seed}"]
        log = open(tmp_path / f"{name}{seed}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "gepa_lab.run", *args], cwd=ROOT, stdout=log, stderr=log), out, log))
    codes = [proc.wait(timeout=1200) for proc, _, _ in procs]  # all of them end before any assertion
    for (_, out, log), code in zip(procs, codes):
        log.close()
        assert code == 0, Path(log.name).read_text()[-3000:]
    return [json.loads((out / "summary.json").read_text()) for _, out, _ in procs]


def margins(summary: dict) -> tuple[float, float]:
    return (summary["best_val_score"] - summary["seed_val_score"], summary["best_test_score"] - summary["seed_test_score"])


@pytest.mark.slow
def test_banking77_winner_beats_seed_for_most_seeds(tmp_path, simulator):
    summaries = compile_seeds(tmp_path, "seed", ["task=banking77"], simulator)
    report = [(round(s["seed_val_score"], 3), round(s["best_val_score"], 3), round(s["seed_test_score"], 3),
               round(s["best_test_score"], 3), s["metric_calls"]) for s in summaries]
    print("seed val, best val, seed test, best test, metric calls:", report)
    good = [s for s in summaries if margins(s)[0] >= 0.05 and margins(s)[1] >= 0.03]
    assert len(good) >= 2, report
    assert all(s["metric_calls"] <= 1000 for s in summaries)
    assert len({s["best_val_score"] for s in summaries} | {s["best_test_score"] for s in summaries}) > 2, "seeds differ"
    first = summaries[0]
    for field in ("task", "corpus_manifest_hash", "config_hash", "git_commit", "versions", "lm_calls", "wall_seconds"):
        assert first[field], field
    assert {"dspy", "gepa"} <= set(first["versions"])
    state = json.loads(Path(first["program_path"]).read_text())
    assert "Cues learned from feedback" in json.dumps(state) or first["best_candidate_idx"] == 0


@pytest.mark.slow
def test_generated_corpus_unseen_by_the_simulator_improves(tmp_path, simulator):
    generated.write(tmp_path / "gen")
    summaries = compile_seeds(tmp_path, "gen", [f"hydra.searchpath=[file://{tmp_path / 'gen'}]", "task=classify",
                                                "corpus=generated"], simulator)
    report = [(round(s["seed_val_score"], 3), round(s["best_val_score"], 3), round(s["seed_test_score"], 3),
               round(s["best_test_score"], 3)) for s in summaries]
    print("generated corpus: seed val, best val, seed test, best test:", report)
    assert sum(margins(s)[0] >= 0.05 and margins(s)[1] >= 0.03 for s in summaries) >= 2, report


def _iterations_done(out: Path) -> int:
    return len(list((out / "results" / "candidates").glob("*.parquet"))) if (out / "results").exists() else 0


@pytest.mark.slow
def test_killed_run_resumes_without_spending_the_budget_twice(tmp_path):
    from gepa_lab.servers.simulator import start_simulator

    out = tmp_path / "resume"
    budget = 200
    with start_simulator(max_in_flight=8, latency_ms=50) as sim:  # slow enough to kill mid-run
        args = ["task=banking77", "tracking=none", f"output_dir={out}", f"optimizer.max_metric_calls={budget}",
                "optimizer.reflection_minibatch_size=4", *TINY_CORPUS, f"lm.api_base={sim.url}", f"reflection_lm.api_base={sim.url}"]
        proc = subprocess.Popen([sys.executable, "-m", "gepa_lab.run", *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        while not (out / "gepa" / "gepa_state.bin").exists() or _iterations_done(out) < 1:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / "summary.json").exists()
        done = run_cli("gepa_lab.run", *args)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "resuming" in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    # strict_budget: the resumed run continues the killed one's count and never crosses the budget
    assert budget * 0.75 <= summary["metric_calls"] <= budget, summary["metric_calls"]


def test_cli_starts_and_stops_its_own_simulator_and_refuses_another_config(tmp_path):
    out = tmp_path / "cli"
    args = ["task=banking77", "tracking=none", f"output_dir={out}", "optimizer.max_metric_calls=48",
            "optimizer.reflection_minibatch_size=4", *TINY_CORPUS]
    tag, env = tagged_env()
    first = run_cli("gepa_lab.run", *args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert "seed" in first.stdout and "winner" in first.stdout
    assert summary["program_path"] == str(out / "program.json")
    assert (out / ".hydra" / "config.yaml").exists() and (out / ".dspy_cache").is_dir()
    assert not tagged_processes(tag, "gepa_lab.sim"), "the run left its simulator running"
    again = run_cli("gepa_lab.run", *args[:-1], "optimizer.seed=7", args[-1])
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "another config" in again.stderr, again.stderr


def test_run_is_tracked_like_a_trial_in_wandb_offline_and_mlflow(tmp_path, simulator):
    """tracking=local (conf/run.yaml's default): a W&B offline run in output_dir/wandb and an MLflow run in
    output_dir/mlflow.db, both holding the run's scores and closed as finished."""
    from mlflow import MlflowClient

    from tests.support.report_check import check_report
    from tests.support.wandb_offline import logged_html, runs_by_job_type

    out = tmp_path / "tracked"
    done = run_cli("gepa_lab.run", "task=banking77", "tracking=local", f"output_dir={out}", "optimizer.max_metric_calls=48",
                   "optimizer.reflection_minibatch_size=4", *TINY_CORPUS,
                   f"lm.api_base={simulator.url}", f"reflection_lm.api_base={simulator.url}",
                   env={"WANDB_MODE": "offline", "WANDB_SILENT": "false"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Weave" not in done.stderr, done.stderr  # W&B's suggestion to trace dspy with Weave stays off the console
    summary = json.loads((out / "summary.json").read_text())

    runs = runs_by_job_type(out / "wandb")
    [run], [report_run] = runs.pop("trial"), runs.pop("report")
    assert not runs
    assert run["exit_code"] == 0 and run["run"].display_name == out.name
    assert run["summary"]["best_val_score"] == pytest.approx(summary["best_val_score"])
    assert run["summary"]["status"] == "completed" and run["config"]["optimizer"]["max_metric_calls"] == 48

    mlflow = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    [tracked] = mlflow.search_runs([mlflow.get_experiment_by_name("gepa_lab").experiment_id])
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == out.name
    assert "mlflow.parentRunId" not in tracked.data.tags  # a run of its own: no sweep run above it
    assert tracked.data.tags["config_hash"] == summary["config_hash"]
    assert tracked.data.metrics["best_val_score"] == pytest.approx(summary["best_val_score"])
    assert {a.path for a in mlflow.list_artifacts(tracked.info.run_id)} >= {"summary.json", "program.json", "report.html"}

    # the run's report: each figure equals its query on the run's tables; in its MLflow run and in W&B
    report = out / "report.html"
    assert check_report(report, out).data["best_trial"]["trial_id"] == "run"
    logged = Path(mlflow.download_artifacts(tracked.info.run_id, "report.html", str(tmp_path)))
    assert logged.read_text() == report.read_text() == logged_html(report_run, "report")
    assert f"report: {report}" in done.stderr

    # 95% intervals: in summary.json, from the per-example test scores the run recorded; in the trials table, on the
    # console, in the leaderboard, in MLflow and in W&B
    con = open_results(out)
    test_scores = "SELECT example_id, score FROM evaluations WHERE split = 'test' AND candidate_idx = {}"
    seed = dict(sql(con, test_scores.format(0)).rows)
    best = dict(sql(con, test_scores.format(summary["best_candidate_idx"])).rows)
    assert len(seed) == 20 and set(best) == set(seed)
    pairs = sorted((seed[i], best[i]) for i in seed)
    assert summary["seed_test_ci95"] == list(bootstrap_ci(sorted(seed.values())))
    assert summary["best_test_ci95"] == list(bootstrap_ci(sorted(best.values())))
    assert summary["test_gain_ci95"] == list(paired_bootstrap_ci([s for s, _ in pairs], [b for _, b in pairs]))
    low, high = summary["best_test_ci95"]
    assert low <= summary["best_test_score"] <= high
    [trial] = sql(con, "SELECT * FROM trials").dicts()
    for key in ("seed_test_ci95", "best_test_ci95", "test_gain_ci95"):
        assert [trial[f"{key}_low"], trial[f"{key}_high"]] == summary[key], key
        assert [tracked.data.metrics[f"{key}_low"], tracked.data.metrics[f"{key}_high"]] == pytest.approx(summary[key]), key
        assert [run["summary"][f"{key}_low"], run["summary"][f"{key}_high"]] == pytest.approx(summary[key]), key
    shown = with_interval(summary["best_test_score"], summary["best_test_ci95"])
    assert shown in done.stdout
    board = run_cli("gepa_lab.results", str(out), env={"COLUMNS": "250"})
    assert board.returncode == 0 and shown in board.stdout and "val-test gap" in board.stdout, board.stdout + board.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.max_metric_calls=0", "optimizer.max_metric_calls"),
        ("optimizer.reflection_minibatch_size=abc", "optimizer.reflection_minibatch_size"),
        ("task.program=no_such_module:Program", "no_such_module"),
        ("task.metric=gepa_lab.tasks.classify:nope", "nope"),
        ("lm.kind=openai_compatible", "api_base"),
    ],
)
def test_bad_config_is_refused_before_anything_starts(tmp_path, override, message):
    """What `python -m gepa_lab.run` does first; a GepaLabError is one line and exit code 2 there (the CLI
    shape is checked above, with a config that clashes with an existing output_dir)."""
    with pytest.raises(GepaLabError) as err:
        load_run_config(compose("run", [f"output_dir={tmp_path / 'bad'}", "tracking=none", override]))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "bad").exists()


def test_online_wandb_without_a_key_is_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login` either
    with pytest.raises(GepaLabError) as err:
        load_run_config(compose("run", [f"output_dir={tmp_path / 'bad'}", "tracking.wandb.mode=online"]))
    assert "WANDB_API_KEY" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "bad").exists()


USER_MODULE = '''
import dspy

class TicketSignature(dspy.Signature):
    """Classify the topic of the support ticket."""
    ticket: str = dspy.InputField()
    topic: str = dspy.OutputField()

class MyProgram(dspy.Module):
    def __init__(self):
        super().__init__()
        self.classify = dspy.Predict(TicketSignature)

    def forward(self, ticket):
        return self.classify(ticket=ticket)

CALLS = []

def my_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    ok = (pred.topic or "").strip() == gold.topic
    return dspy.Prediction(score=float(ok), feedback=("Correct." if ok else "Incorrect.") + f' The correct answer is "{gold.topic}".')
'''


def test_user_program_and_metric_by_import_path(tmp_path, simulator):
    (tmp_path / "user_pkg").mkdir()
    (tmp_path / "user_pkg" / "__init__.py").write_text("")
    (tmp_path / "user_pkg" / "tickets.py").write_text(USER_MODULE)
    generated.write(tmp_path / "gen", n=120)
    out = tmp_path / "user"
    result = run_cli(
        "gepa_lab.run", f"output_dir={out}", "tracking=none", f"hydra.searchpath=[file://{tmp_path / 'gen'}]",
        "task=classify", "corpus=generated", "corpus.name=generated_small", "corpus.splits.train=40",
        "corpus.splits.val=20", "corpus.splits.test=20", "task.program=user_pkg.tickets:MyProgram",
        "task.metric=user_pkg.tickets:my_metric", "optimizer.max_metric_calls=60", "optimizer.reflection_minibatch_size=4",
        f"lm.api_base={simulator.url}", f"reflection_lm.api_base={simulator.url}",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["best_instructions"]) == ["classify"]  # the user's predictor, by its attribute name
    state = json.loads(Path(summary["program_path"]).read_text())
    assert "classify" in state


def test_evaluations_hold_each_examples_corpus_id_prediction_and_feedback(tmp_path, simulator):
    """A real small run: evaluations key on the corpus's example ids and hold the program's prediction (JSON of its
    output fields) and the metric's feedback, for the seed and the winner on test and every candidate GEPA scored on val."""
    from gepa_lab.corpus import read_split
    from gepa_lab.results.query import open_results

    out = tmp_path / "truth"
    done = run_cli("gepa_lab.run", "task=banking77", "tracking=none", f"output_dir={out}", "optimizer.max_metric_calls=120",
                   "optimizer.reflection_minibatch_size=3", *TINY_CORPUS, f"lm.api_base={simulator.url}",
                   f"reflection_lm.api_base={simulator.url}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    gold = {split: {row["id"]: row["intent"] for row in read_split(ROOT / "corpora" / "banking77_tiny", split)}
            for split in ("val", "test")}
    con = open_results(out)
    candidates = [idx for (idx,) in con.execute("SELECT candidate_idx FROM candidates ORDER BY 1").fetchall()]
    assert len(candidates) == summary["num_candidates"] >= 2, candidates  # the seed and at least one proposal
    best = summary["best_candidate_idx"]
    evaluated = {split: {idx: {} for idx in idxs} for split, idxs in (("val", candidates), ("test", {0, best}))}
    for split, idx, example_id, score, prediction, feedback in con.execute(
            "SELECT split, candidate_idx, example_id, score, prediction, feedback FROM evaluations").fetchall():
        evaluated[split][idx][example_id] = (score, json.loads(prediction), feedback)
    for split, by_candidate in evaluated.items():
        assert sorted(by_candidate) == sorted({0, best} if split == "test" else candidates)
        for idx, examples in by_candidate.items():
            assert sorted(examples) == sorted(gold[split]), (split, idx)  # the corpus ids, every example once
            for example_id, (score, prediction, feedback) in examples.items():
                expected = gold[split][example_id]
                assert score == float(prediction["intent"] == expected), (split, idx, example_id, prediction)
                assert feedback.startswith("Correct." if score else "Incorrect:") and f'"{expected}"' in feedback
    test_scores = [s for s, _, _ in evaluated["test"][best].values()]
    assert sum(test_scores) / len(test_scores) == pytest.approx(summary["best_test_score"])
