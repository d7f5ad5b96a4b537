"""W&B Sweeps export and agent (gepa_lab.sweep.wandb_sweeps).

W&B Sweeps need the W&B server (`wandb sweep`/`wandb agent` fail offline), so the export is checked
against the sweep definitions, and the agent entry runs one real tiny trial offline with the
parameters injected as W&B's agent would hand them (wandb.config)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gepa_lab.errors import ConfigError
from gepa_lab.paths import SWEEPS_DIR
from gepa_lab.sweep.space import leaves
from gepa_lab.sweep.wandb_sweeps import export, to_wandb
from tests.support.wandb_offline import wandb_run

ROOT = Path(__file__).resolve().parent.parent
DROPPED = ("num_samples", "max_concurrent", "budget", "scheduler", "resources")


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gepa_lab.sweep.wandb_sweeps", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def sweep_block(name: str) -> dict:
    return yaml.safe_load((SWEEPS_DIR / f"{name}.yaml").read_text())["sweep"]


def spec(**over) -> dict:
    from gepa_lab.sweep.config import SweepSpec

    return SweepSpec.model_validate({"name": "t", **over}).model_dump(mode="json")


# ------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name,to_file", [("demo", False), ("banking77_vllm", True)])
def test_export_cli_maps_every_leaf(name: str, to_file: bool, tmp_path: Path):
    out = tmp_path / "wandb.yaml"
    done = cli("export", f"sweep={name}", *(["--out", str(out)] if to_file else []))
    assert done.returncode == 0, done.stderr
    # stdout (or the file) is the YAML alone; what W&B cannot express goes to stderr
    doc = yaml.safe_load(out.read_text() if to_file else done.stdout)
    assert "W&B cannot express" in done.stderr and (to_file or "W&B cannot express" not in done.stdout)
    block = sweep_block(name)
    assert doc["name"] == block["name"]
    assert doc["method"] == {"grid": "grid", "random": "random", "optuna": "bayes"}[block["search"]]
    assert doc["metric"] == {"name": "best_val_score", "goal": "maximize"}
    found = leaves(block["space"])
    assert set(doc["parameters"]) == set(found)
    for path, (kind, arg) in found.items():
        expected = {
            "grid": {"values": arg}, "choice": {"values": arg},
            "uniform": {"distribution": "uniform", "min": arg[0], "max": arg[1]},
            "loguniform": {"distribution": "log_uniform_values", "min": arg[0], "max": arg[1]},
            "randint": {"distribution": "int_uniform", "min": arg[0], "max": arg[1]},
        }[kind]
        assert doc["parameters"][path] == expected, path
    assert doc["command"] == ["${env}", "python", "-m", "gepa_lab.sweep.wandb_sweeps", "agent", f"sweep={name}",
                              "${args_no_hyphens}"]
    for item in DROPPED:
        assert f"dropped {item}" in done.stderr or f"{item}=" in done.stderr, (item, done.stderr)


def test_export_prints_what_is_dropped_with_values():
    doc, notes = export(["sweep=banking77_vllm"])
    text = "\n".join(notes)
    for item in ("max_concurrent=8", "metric_calls=40000", "wall_seconds=14400", "scheduler=asha", "cpu=2",
                 "num_samples=32"):
        assert item in text, item
    assert doc["run_cap"] == 32  # random/bayes: num_samples is W&B's run_cap


def test_every_kind_maps_and_overrides_reach_the_agent_command():
    doc, notes = export(["sweep=demo", "sweep.search=random", "sweep.num_samples=3", "optimizer.max_metric_calls=50",
                         "+sweep.space.lm.temperature={loguniform:[0.01,1.0]}",
                         "+sweep.space.reflection_lm.temperature={uniform:[0.0,0.5]}",
                         "+sweep.space.optimizer.max_merge_invocations={randint:[1,4]}",
                         "+sweep.space.optimizer.candidate_selection_strategy={choice:[pareto,current_best]}"])
    assert doc["method"] == "random" and doc["run_cap"] == 3
    assert doc["parameters"]["lm.temperature"] == {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0}
    assert doc["parameters"]["reflection_lm.temperature"] == {"distribution": "uniform", "min": 0.0, "max": 0.5}
    assert doc["parameters"]["optimizer.max_merge_invocations"] == {"distribution": "int_uniform", "min": 1, "max": 4}
    assert doc["parameters"]["optimizer.candidate_selection_strategy"] == {"values": ["pareto", "current_best"]}
    # the agent recomposes the very same sweep: the export's overrides ride along in its command
    assert doc["command"][5:7] == ["sweep=demo", "sweep.search=random"]
    assert "optimizer.max_metric_calls=50" in doc["command"] and doc["command"][-1] == "${args_no_hyphens}"


def test_args_no_hyphens_are_hydra_overrides_the_agent_can_compose():
    """W&B turns the parameters into `key=value` (its own code, below); Hydra must take them as is."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    from gepa_lab.compose import compose

    params = {"optimizer.seed": 7, "optimizer.use_merge": False, "lm.temperature": 0.25,
              "optimizer.candidate_selection_strategy": "current_best"}
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args_no_hyphens"]
    cfg = compose("sweep", ["sweep=demo", *args], return_hydra_config=True)
    assert cfg.hydra.runtime.choices.sweep == "demo"
    for key, value in params.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value, key


def test_method_mapping_and_grid_limits():
    assert to_wandb(spec(search="optuna", space={"optimizer": {"seed": {"choice": [0, 1]}}}), [])[0]["method"] == "bayes"
    assert to_wandb(spec(search="random", space={"optimizer": {"seed": {"randint": [0, 9]}}}), [])[0]["method"] == "random"
    grid, notes = to_wandb(spec(search="grid", num_samples=2, space={"optimizer": {"seed": {"grid": [0, 1]}}}), [])
    assert grid["method"] == "grid" and "run_cap" not in grid
    assert any("num_samples=2" in n and "repeats" in n for n in notes)
    with pytest.raises(ConfigError, match="sweep.space.lm.temperature"):
        to_wandb(spec(search="grid", space={"lm": {"temperature": {"uniform": [0.0, 1.0]}}}), [])
    with pytest.raises(ConfigError, match="empty"):
        to_wandb(spec(search="grid", space={}), [])


def test_export_errors_are_one_line():
    done = cli("export", "sweep=no_such_sweep")
    assert done.returncode == 2, done
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "no_such_sweep" in done.stderr
    with pytest.raises(ConfigError, match="sweep.space.optimizer.seed2: no such config key"):
        export(["sweep=demo", "+sweep.space.optimizer.seed2={grid:[0]}"])


# -------------------------------------------------------------------------------------------- agent


def offline_run(wandb_dir: Path) -> dict:
    [run_dir] = (wandb_dir / "wandb").glob("offline-run-*")
    return wandb_run(run_dir)


AGENT = """
import json, sys
from gepa_lab.cli import one_line_errors
from gepa_lab.sweep.wandb_sweeps import agent
summary = one_line_errors(agent)(json.loads(sys.argv[1]), config=json.loads(sys.argv[2]))
print("SUMMARY", json.dumps({k: summary[k] for k in ("best_val_score", "params", "program_path")}))
"""


def run_agent(tmp_path: Path, overrides: list[str], config: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb"), "WANDB_SILENT": "true"}
    env.pop("WANDB_SWEEP_ID", None)
    (tmp_path / "wb").mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-c", AGENT, json.dumps(overrides), json.dumps(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)


TRACKED = ["sweep=demo", "task=classify", "optimizer.max_metric_calls=24", "optimizer.reflection_minibatch_size=6"]
TINY = [*TRACKED, "tracking.mlflow.enabled=false"]


def test_agent_runs_one_trial_with_the_injected_parameters(tmp_path: Path):
    out = tmp_path / "out"
    # optimizer.seed=0 on the command line; W&B's value (wandb.config) wins
    done = run_agent(tmp_path, [*TINY, f"output_dir={out}", "optimizer.seed=0"],
                     {"optimizer.seed": 1, "optimizer.reflection_minibatch_size": 6})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.split("SUMMARY ", 1)[1])
    assert summary["params"] == {"optimizer.seed": 1, "optimizer.reflection_minibatch_size": 6}

    run = offline_run(tmp_path / "wb")
    trial_dir = out / "trials" / run["run_id"]
    assert Path(summary["program_path"]) == trial_dir / "program.json" and (trial_dir / "program.json").exists()
    config = json.loads((trial_dir / "config.json").read_text())["config"]
    assert config["optimizer"]["seed"] == 1 and config["optimizer"]["reflection_minibatch_size"] == 6
    assert config["optimizer"]["max_metric_calls"] == 24

    # wandb.config holds the parameters; the sweep's metric is in the run's summary; the run ended well
    assert run["config"]["optimizer.seed"] == 1 and run["config"]["optimizer.reflection_minibatch_size"] == 6
    assert run["summary"]["best_val_score"] == pytest.approx(summary["best_val_score"])
    assert run["group"] == "demo" and run["exit_code"] == 0

    # the results land as in a Ray sweep: output_dir/results, queryable
    from gepa_lab.results.query import best_trial, leaderboard, open_results

    con = open_results(out)
    row = leaderboard(con).dicts()[0]
    assert row["trial_id"] == run["run_id"] and row["status"] == "completed"
    assert row["optimizer.seed"] == 1 and row["optimizer.reflection_minibatch_size"] == 6
    assert best_trial(con)["best_val_score"] == pytest.approx(summary["best_val_score"])
    assert (out / ".dspy_cache").is_dir()  # the default cache=disk: in the sweep's folder, shared by its runs
    assert not (out / "mlflow.db").exists()  # tracking.mlflow.enabled=false


def trial_summary(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    program = json.loads(done.stdout.split("SUMMARY ", 1)[1])["program_path"]
    return json.loads((Path(program).parent / "summary.json").read_text())


def test_agent_caches_in_redis_and_writes_an_mlflow_run_per_trial(tmp_path: Path):
    """cache=redis reaches the agent's trial (it used to get a disk cache whatever the config said): a second run
    of the same trial is answered from Redis. tracking.mlflow gives each W&B run an MLflow run of its own."""
    from mlflow import MlflowClient

    from gepa_lab.lm.cache import shared_cache_stats
    from gepa_lab.servers.redis import RedisServer

    out = tmp_path / "out"
    with RedisServer() as redis_server:
        args = [*TRACKED, "cache=redis", f"cache.redis_url={redis_server.url}", f"output_dir={out}"]
        first = trial_summary(run_agent(tmp_path / "first", args, {"optimizer.seed": 1}))
        stored = shared_cache_stats(out, mode="redis", redis_url=redis_server.url)  # namespace: the sweep folder's name
        assert stored["entries"] > 0 and stored["puts"] >= stored["entries"], stored
        second = trial_summary(run_agent(tmp_path / "second", args, {"optimizer.seed": 1}))
        again = shared_cache_stats(out, mode="redis", redis_url=redis_server.url)
    assert again["entries"] == stored["entries"], (stored, again)  # the same requests: nothing new to store
    assert again["hits"] - stored["hits"] == second["lm_calls"] > 0, (stored, again, second["lm_calls"])
    assert all(role["cache_hits"] == role["requests"] for role in second["lm_usage"].values()), second["lm_usage"]
    assert not (out / ".dspy_cache").exists()

    mlflow = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("gepa_lab").experiment_id])
    by_trial = {run.data.tags["gepa_lab.trial_id"]: run for run in runs}
    assert set(by_trial) == {first["wandb_run_id"], second["wandb_run_id"]}
    for summary in (first, second):
        run = by_trial[summary["wandb_run_id"]]
        assert run.info.status == "FINISHED" and run.info.run_name == summary["wandb_run_id"]
        assert "mlflow.parentRunId" not in run.data.tags  # no sweep run above a W&B agent's trials
        assert run.data.metrics["best_val_score"] == pytest.approx(summary["best_val_score"])
        assert run.data.params["optimizer.seed"] == "1"
        assert {a.path for a in mlflow.list_artifacts(run.info.run_id)} >= {"summary.json", "program.json"}


def test_agent_whose_cache_cannot_start_marks_its_run_failed(tmp_path: Path):
    """The harness finishes the trial's sinks also when the trial fails before it starts: the W&B run says why."""
    from gepa_lab.servers.process import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    done = run_agent(tmp_path, [*TINY, "cache=redis", f"cache.redis_url={dead}", f"output_dir={tmp_path / 'out'}"], {})
    assert done.returncode != 0 and "does not answer" in done.stderr, done.stderr[-2000:]
    run = offline_run(tmp_path / "wb")
    assert run["exit_code"] == 1 and run["summary"]["status"] == "failed", run["summary"]


def test_agent_with_cache_off_writes_no_cache(tmp_path: Path):
    out = tmp_path / "out"
    summary = trial_summary(run_agent(tmp_path, [*TINY, "cache=off", f"output_dir={out}"], {"optimizer.seed": 1}))
    assert summary["lm_calls"] > 0
    assert not list(out.rglob(".dspy_cache")) and not list(out.rglob("cache.db")), sorted(map(str, out.rglob("*")))
    assert all(role["cache_hits"] == 0 for role in summary["lm_usage"].values())


def test_agent_rejects_a_bad_parameter_and_marks_the_run_failed(tmp_path: Path):
    done = run_agent(tmp_path, [*TINY, f"output_dir={tmp_path / 'out'}"], {"optimizer.reflection_minibatch_size": 0})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "reflection_minibatch_size" in done.stderr and "Traceback" not in done.stderr
    assert offline_run(tmp_path / "wb")["exit_code"] == 1
