"""A sweep survives SIGKILL. The worker of a running trial killed: Tune retries the trial, which resumes from its GEPA
state (at most one iteration of metric calls lost) and writes on into its MLflow and W&B runs; the sweep completes.
The driver killed: rerunning the same command finishes the sweep; a trial that finished is not rerun, a running one
resumes, the budget ledger is restored from disk so the whole sweep stays within its budget, there is one MLflow parent
run and one run per trial, and one final row per trial in the results."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import wandb
from mlflow.tracking import MlflowClient

from gepa_lab.results import query
from gepa_lab.results.writer import write_table
from gepa_lab.sweep.driver import mark_unfinished
from tests.conftest import ROOT, run_cli
from tests.support.processes import TAG, tagged_env, tagged_processes
from tests.support.wandb_offline import wandb_run
from tests.support.corpus import TINY_CORPUS

MINIBATCH, VAL = 4, 20
ITERATION = 2 * MINIBATCH + VAL  # the most metric calls one GEPA iteration spends: two minibatches and a full val pass
SWEEP = ["sweep=demo", *TINY_CORPUS, "sweep.space.optimizer.reflection_minibatch_size={grid:[4]}", "lm.sim.latency_ms=40"]


def rows(out: Path, table: str) -> list[dict]:
    return [row for path in query.parquet_files(out / "results", table) for row in pq.read_table(path).to_pylist()]


def trial_rows(out: Path) -> dict[str, dict]:
    return {row["trial_id"]: row for row in rows(out, "trials")}


def wait_for(done, proc: subprocess.Popen, what: str, timeout: float = 600):
    deadline = time.time() + timeout
    while not (found := done()):
        if proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"no {what} within {timeout:g}s"
        time.sleep(0.2)
    return found


def start_sweep(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gepa_lab.sweep", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)


def process_holding_open(path: Path, tag: str) -> int | None:
    """The pid of the tagged process that has `path` open (a trial's worker holds its compile.log open while it runs)."""
    wanted = f"{TAG}={tag}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and wanted in (proc / "environ").read_bytes().split(b"\0") and \
                    any(os.readlink(fd) == str(path) for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def mlflow_runs(summary: dict) -> list:
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`gepa_lab.output_dir` LIKE '{summary['output_dir']}%'")
    return runs


def wandb_trial_runs(out: Path) -> dict[str, list[Path]]:
    """Each trial's W&B offline run folders, by trial id, oldest first: the trial's folder names the run's id, and a
    resumed run has a folder per attempt under that id (a killed attempt's may hold nothing: W&B had not written it out).
    Checks that no other run than the trials' and the report's was started."""
    folders: dict[str, list[Path]] = {}
    for folder in sorted((out / "wandb").glob("offline-run-*")):
        folders.setdefault(folder.name.rsplit("-", 1)[1], []).append(folder)
    by_trial = {trial.name: folders.pop((trial / "wandb_run_id").read_text().strip(), [])
                for trial in (out / "trials").iterdir() if (trial / "wandb_run_id").exists()}
    assert all(wandb_run(f)["run"].job_type == "report" for rest in folders.values() for f in rest), folders
    return by_trial


def assert_candidates_kept_their_numbers(out: Path) -> None:
    """GEPA went on from its saved state: no proposal's number is reused (the seed, 0, is re-scored on each resume)."""
    numbers = [(r["trial_id"], r["candidate_idx"]) for r in rows(out, "candidates") if r["candidate_idx"] > 0]
    assert numbers and len(numbers) == len(set(numbers)), sorted(numbers)


# ---- a trial's worker killed ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def killed_trial(tmp_path_factory, request):
    out = tmp_path_factory.mktemp("crashes") / "trial_killed"
    # a live wandb-core service whose token (WANDB_SERVICE) the sweep inherits, as from a notebook or an earlier W&B
    # test in this process: the trials must not stream through it (a killed attempt's run would stay open there)
    wandb.setup()
    request.addfinalizer(wandb.teardown)
    tag, env = tagged_env()
    assert env.get("WANDB_SERVICE")
    args = [*SWEEP, f"output_dir={out}", "optimizer.max_metric_calls=300"]
    proc = start_sweep(args, env)
    try:
        def far_enough():  # a trial three iterations in, its GEPA state saved: a restart from zero would show
            for trial_id in trial_rows(out):
                calls = [r["metric_calls"] for r in rows(out, "candidates") if r["trial_id"] == trial_id]
                if max(calls, default=0) >= 3 * ITERATION and (out / "trials" / trial_id / "gepa" / "gepa_state.bin").exists():
                    return trial_id
            return None

        trial_id = wait_for(far_enough, proc, "a trial three GEPA iterations in")
        before = [r for r in rows(out, "candidates") if r["trial_id"] == trial_id]
        worker = process_holding_open(out / "trials" / trial_id / "compile.log", tag)
        assert worker is not None, "no process holds the running trial's compile.log"
        killed_at = time.time()
        os.kill(worker, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-5000:]
    return {"out": out, "trial_id": trial_id, "before": before, "killed_at": killed_at, "worker": worker,
            "summary": json.loads((out / "summary.json").read_text())}


def test_a_trial_whose_worker_is_killed_is_retried_and_the_sweep_completes(killed_trial):
    out, trial_id = killed_trial["out"], killed_trial["trial_id"]
    assert killed_trial["summary"]["trials"] == {"total": 2, "completed": 2, "failed": 0, "stopped": 0, "skipped": 0}
    # Tune saw the worker die and ran the trial again
    [error_file] = (out / "tune").glob(f"*{trial_id}*/error.txt")
    assert "Failure # 1" in error_file.read_text()
    assert trial_rows(out)[trial_id]["metric_calls"] <= 300  # strict_budget held across the two attempts


def test_the_retried_trial_resumes_from_its_gepa_state_losing_at_most_one_iteration(killed_trial):
    out, trial_id, before = killed_trial["out"], killed_trial["trial_id"], killed_trial["before"]
    assert_candidates_kept_their_numbers(out)
    final = {(r["candidate_idx"], r["instructions_json"]) for r in rows(out, "candidates") if r["trial_id"] == trial_id}
    assert {(r["candidate_idx"], r["instructions_json"]) for r in before} <= final  # what it had found is kept
    # every GEPA iteration logs its metric calls (the step) to the trial's MLflow run: the first iteration after the
    # kill went on from the count the results recorded before it, less at most the iteration in flight
    reached = max(r["metric_calls"] for r in before)
    [run] = [r for r in mlflow_runs(killed_trial["summary"]) if r.data.tags.get("gepa_lab.trial_id") == trial_id]
    history = MlflowClient(tracking_uri=killed_trial["summary"]["tracking_uri"]).get_metric_history(run.info.run_id, "iteration")
    after = [m.step for m in history if m.timestamp / 1000 > killed_trial["killed_at"]]
    assert after and min(after) > reached - ITERATION, (reached, sorted(after))
    assert any(m.step <= reached for m in history)  # the same run holds the iterations from before the kill


def test_the_retried_trial_writes_on_into_its_mlflow_and_wandb_runs(killed_trial):
    out, trial_id = killed_trial["out"], killed_trial["trial_id"]
    runs = mlflow_runs(killed_trial["summary"])
    trial_runs = [r for r in runs if r.data.tags.get("gepa_lab.kind") == "trial"]
    assert sorted(r.data.tags["gepa_lab.trial_id"] for r in trial_runs) == sorted(trial_rows(out))  # one per trial
    assert {r.info.status for r in trial_runs} == {"FINISHED"}
    assert all("error" not in r.data.tags for r in trial_runs)
    wandb = wandb_trial_runs(out)
    assert sorted(wandb) == sorted(trial_rows(out)) and all(wandb.values())
    assert [len(folders) for trial, folders in wandb.items() if trial != trial_id] == [1]
    assert len(wandb[trial_id]) == 2  # resumed under its run id
    # the retry finished the run and went on past what was recorded before the kill (a killed attempt's folder may
    # hold no data file, or a partial one: no exit record, not even the run's)
    attempts = {f.name: wandb_run(f) for f in wandb[trial_id] if any(f.glob("run-*.wandb"))}
    reached = max(r["metric_calls"] for r in killed_trial["before"])
    seen = {name: (a["exit_code"], a["run"] and a["run"].display_name, max((row["metric_calls"] for row in a["history"]
                                                               if "metric_calls" in row), default=None))
            for name, a in attempts.items()}
    assert any(code == 0 and name == trial_id and (calls or 0) > reached for code, name, calls in seen.values()), \
        (reached, seen)


# ---- the driver killed ------------------------------------------------------------------------------------------------
BUDGET = 240  # three trials of up to 120 metric calls: a ledger reset at the rerun would let them spend 360


@pytest.fixture(scope="module")
def killed_driver(tmp_path_factory):
    out = tmp_path_factory.mktemp("crashes") / "driver_killed"
    tag, env = tagged_env()
    # Tune saves its experiment state once at the start and not again before the kill: the worst case, where the
    # rerun's Tune restarts every trial, the finished one included
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "3600"
    args = [*SWEEP, f"output_dir={out}", "sweep.space.optimizer.seed={grid:[0,1,2]}", "sweep.max_concurrent=1",
            "optimizer.max_metric_calls=120", f"sweep.budget.metric_calls={BUDGET}"]
    proc = start_sweep(args, env)
    try:
        def one_finished_one_running():
            trials = trial_rows(out)
            finished = [t for t, r in trials.items() if r["status"] == "completed"]
            running = [t for t, r in trials.items() if r["status"] == "running"
                       and any(c["trial_id"] == t for c in rows(out, "candidates"))
                       and (out / "trials" / t / "gepa" / "gepa_state.bin").exists()]
            return (finished[0], running[0]) if finished and running else None

        finished, running = wait_for(one_finished_one_running, proc, "a finished trial and a running one")
        finished_row = trial_rows(out)[finished]
        running_before = [r for r in rows(out, "candidates") if r["trial_id"] == running]
        proc.kill()  # the driver alone, as the OOM killer or a scheduler's SIGKILL would
        proc.wait(timeout=60)
        deadline = time.time() + 20
        while tagged_processes(tag, "raylet") and time.time() < deadline:
            time.sleep(0.5)
        assert not (out / "summary.json").exists()
        spent_before = json.loads((out / "ledger.json").read_text())["metric_calls"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    rerun = run_cli("gepa_lab.sweep", *args, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    assert "resuming" in rerun.stderr
    return {"out": out, "finished": finished, "finished_row": finished_row, "running": running,
            "running_before": running_before, "spent_before": spent_before,
            "summary": json.loads((out / "summary.json").read_text())}


def test_a_rerun_finishes_the_sweep_without_rerunning_a_finished_trial(killed_driver):
    out, finished = killed_driver["out"], killed_driver["finished"]
    trials = trial_rows(out)
    assert len(trials) == 3 and killed_driver["summary"]["trials"]["total"] == 3  # exactly one final row per trial
    assert all(r["status"] in ("completed", "stopped", "skipped") for r in trials.values()), trials
    assert trials[finished] == killed_driver["finished_row"]  # reported from its own record, not run again
    assert len([r for r in rows(out, "candidates") if r["trial_id"] == finished and r["candidate_idx"] == 0]) == 1
    for table in ("trials", "candidates", "evaluations", "lm_usage", "sweeps"):  # nothing torn: every file reads
        for path in query.parquet_files(out / "results", table):
            pq.read_table(path)


def test_the_running_trial_resumes_and_the_whole_sweep_stays_within_its_budget(killed_driver):
    out, running = killed_driver["out"], killed_driver["running"]
    assert_candidates_kept_their_numbers(out)
    kept = {(r["candidate_idx"], r["instructions_json"]) for r in killed_driver["running_before"]}
    assert kept <= {(r["candidate_idx"], r["instructions_json"]) for r in rows(out, "candidates") if r["trial_id"] == running}
    trials = trial_rows(out)
    assert trials[running]["metric_calls"] >= max(r["metric_calls"] for r in killed_driver["running_before"])
    spent = sum(r["metric_calls"] or 0 for r in trials.values())
    # one trial at a time: the budget is passed by at most the iteration in flight when it was reached
    assert spent <= BUDGET + ITERATION, (spent, {t: (r["status"], r["metric_calls"]) for t, r in trials.items()})
    ended_early = [r for r in trials.values() if r["status"] in ("stopped", "skipped")]
    assert ended_early and all(f"sweep budget metric_calls={BUDGET} spent" in r["error"] for r in ended_early)
    assert sum(killed_driver["spent_before"].values()) > 0  # the ledger the rerun started from was on disk


def test_one_mlflow_parent_run_and_one_run_per_trial_across_the_rerun(killed_driver):
    out = killed_driver["out"]
    runs = mlflow_runs(killed_driver["summary"])
    [parent] = [r for r in runs if r.data.tags.get("gepa_lab.kind") == "sweep"]
    assert parent.info.status == "FINISHED"
    trial_runs = [r for r in runs if r.data.tags.get("gepa_lab.kind") == "trial"]
    ran = sorted(t for t, r in trial_rows(out).items() if r["status"] != "skipped")
    assert sorted(r.data.tags["gepa_lab.trial_id"] for r in trial_runs) == ran
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trial_runs)
    assert {r.info.status for r in trial_runs} == {"FINISHED"}
    wandb = wandb_trial_runs(out)
    assert sorted(wandb) == ran and all(wandb.values())  # one W&B run per trial, resumed under its id


def test_a_temp_file_left_by_a_killed_write_is_not_read_as_a_trial(tmp_path):
    """A SIGKILL mid-write leaves an empty hidden temp file beside the trial rows; the rerun's end must skip it."""
    trials = tmp_path / "results" / "trials"
    write_table(trials / "t0.parquet", "trials", [{"trial_id": "t0", "status": "running"}])
    (trials / ".t1.parquet.x1y2.tmp.parquet").touch()
    mark_unfinished(tmp_path / "results")
    assert [row["status"] for row in rows(tmp_path, "trials")] == ["failed"]
