"""W&B sink: real offline runs, read back from the .wandb files they write."""
import json
from pathlib import Path

import pytest

from gepa_lab.config.schema import WandbConfig
from gepa_lab.events import EventStream
from gepa_lab.tracking.wandb_sink import WandbKeyMissing, WandbSink, wandb_env
from tests.support.wandb_offline import wandb_run
from tracking_helpers import WINNER_INSTRUCTION, emit_trial, run_config, wait_until


def runs_by_name(out: Path) -> dict[str, dict]:
    """Every offline run under out/wandb, once W&B's service has written its exit record."""
    runs = {}
    for run_dir in sorted((out / "wandb").glob("offline-run-*")):
        assert wait_until(lambda: wandb_run(run_dir)["exit_code"] is not None, timeout=60), f"{run_dir}: no exit record"
        run = wandb_run(run_dir)
        runs[run["run"].display_name] = {**run, "dir": run_dir}
    return runs


def test_wandb_env_offline_default_online_needs_key(tmp_path, monkeypatch):
    assert wandb_env(WandbConfig(), tmp_path / "o") == {"WANDB_MODE": "offline", "WANDB_DIR": str((tmp_path / "o").resolve()),
                                                        "WANDB_SERVICE": ""}  # each trial process its own wandb-core
    assert (tmp_path / "o").is_dir()
    assert wandb_env(WandbConfig(enabled=False), tmp_path) == {"WANDB_MODE": "disabled"}
    assert wandb_env(WandbConfig(mode="disabled"), tmp_path) == {"WANDB_MODE": "disabled"}
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    with pytest.raises(WandbKeyMissing, match="WANDB_API_KEY"):
        wandb_env(WandbConfig(mode="online"), tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_env(WandbConfig(mode="online"), tmp_path)["WANDB_MODE"] == "online"


def test_one_offline_run_per_trial_grouped_by_sweep(sweep):
    runs = runs_by_name(sweep["out"])
    assert set(runs) == {"t_ok", "t_failed"}
    for run in runs.values():
        assert run["run"].run_group == "test-sweep"
        assert run["run"].project == "gepa_lab"
        assert run["dir"].parent == sweep["out"] / "wandb"


def test_config_is_the_resolved_config_minus_secrets(sweep):
    config = runs_by_name(sweep["out"])["t_ok"]["config"]
    assert config["lm"]["model"] == "sim" and config["lm"]["api_key_env"] == "GEPA_LAB_TEST_KEY"
    assert config["optimizer"]["max_metric_calls"] == 20
    assert config["params"] == {"lm.temperature": 0.0}
    assert config["identity"]["config_hash"] == "cafe0123456789ab"
    assert config["identity"]["corpus_manifest_hash"] == "f00d" * 16
    assert sweep["key"] not in json.dumps(config)


def test_per_iteration_metrics_summary_and_candidate_table(sweep):
    run = runs_by_name(sweep["out"])["t_ok"]
    it = [h for h in run["history"] if "gepa/best_val_score" in h]
    assert [(h["metric_calls"], h["gepa/iteration"], h["gepa/best_val_score"]) for h in it] == [(12, 1, 0.6), (19, 2, 0.75)]
    assert it[-1]["lm/task/requests"] == 19 and it[-1]["lm/reflection/prompt_tokens"] == 500
    cand = [h["candidate/val_score"] for h in run["history"] if "candidate/val_score" in h]
    assert cand == [0.5, 0.6, 0.75]
    s = run["summary"]
    assert s["best_val_score"] == 0.75 and s["best_test_score"] == 0.6 and s["metric_calls"] == 19
    assert s["status"] == "completed" and s["test_score/candidate_2"] == pytest.approx(0.6)
    assert s["task_lm"]["model"] == "sim"
    summary = sweep["summary"]
    assert s["best_test_ci95"] == pytest.approx(summary["best_test_ci95"])
    for key in ("seed_test_ci95", "best_test_ci95", "test_gain_ci95"):
        assert [s[f"{key}_low"], s[f"{key}_high"]] == pytest.approx(summary[key]), key
    assert run["exit_code"] == 0
    (table_file,) = (run["dir"] / "files" / "media" / "table").glob("candidates_*.table.json")
    table = json.loads(table_file.read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [(r["candidate_idx"], r["parent"], r["val_score"], r["is_best"]) for r in rows] == [
        (0, None, 0.5, False), (1, 0, 0.6, False), (2, 1, 0.75, True)]
    assert rows[2]["instruction"] == WINNER_INSTRUCTION


def test_failed_trial_is_marked_failed_with_its_error_redacted(sweep):
    run = runs_by_name(sweep["out"])["t_failed"]
    assert run["exit_code"] == 1
    assert run["summary"]["status"] == "failed"
    assert run["summary"]["error"] == "RuntimeError: LM said no (key ***)"
    assert [h["candidate/val_score"] for h in run["history"] if "candidate/val_score" in h] == [0.5, 0.6]


def test_finish_without_trial_finished_closes_the_run_as_failed(tmp_path):
    cfg = run_config(tmp_path / "trials" / "t")
    sink = WandbSink(WandbConfig(), tmp_path, group="g", run_name="killed", config=cfg)
    emit_trial(EventStream("t", [sink]), cfg, finish=False)
    assert sink.run is not None and not sink.closed
    sink.finish()
    sink.finish()  # idempotent
    run = runs_by_name(tmp_path)["killed"]
    assert run["exit_code"] == 1 and run["summary"]["status"] == "failed"


def test_disabled_sink_writes_nothing(tmp_path):
    cfg = run_config(tmp_path / "trials" / "t")
    sink = WandbSink(WandbConfig(mode="disabled"), tmp_path, group="g", run_name="r", config=cfg)
    emit_trial(EventStream("t", [sink]), cfg)
    sink.finish()
    assert sink.run is None and not (tmp_path / "wandb").exists()
