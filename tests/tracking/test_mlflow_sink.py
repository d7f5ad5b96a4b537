"""MLflow sink on the embedded store (SQLite + artifact folder inside output_dir), read back with MlflowClient."""
import json
import os
import sqlite3
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from gepa_lab.compose import flatten
from gepa_lab.config.schema import MlflowConfig
from gepa_lab.tracking.mlflow_sink import client as sink_client, create_sqlite_store, tracking_uri


def children(c: MlflowClient, sweep) -> dict[str, object]:
    parent = c.get_run(sweep["parent"])
    runs = c.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{sweep['parent']}'")
    return {r.info.run_name: r for r in runs}


@pytest.fixture(scope="module")
def client(sweep):
    return MlflowClient(sweep["tracking_uri"], registry_uri=sweep["tracking_uri"])


def test_embedded_store_lives_inside_output_dir(sweep, client):
    out: Path = sweep["out"]
    assert sweep["tracking_uri"] == f"sqlite:///{out.resolve()}/mlflow.db"
    assert (out / "mlflow.db").is_file()
    exp = client.get_experiment_by_name("gepa_lab")
    assert exp.artifact_location == (out / "mlartifacts").resolve().as_uri()
    assert any((out / "mlartifacts").rglob("summary.json"))
    assert tracking_uri(MlflowConfig(tracking_uri="http://h:5000"), out) == "http://h:5000"


def test_parent_run_per_sweep_nested_run_per_trial(sweep, client):
    parent = client.get_run(sweep["parent"])
    assert parent.info.run_name == "test-sweep" and parent.info.status == "FINISHED"
    assert parent.data.params["sweep.n"] == "2"
    assert parent.data.params["sweep.api_key"] == "***"
    assert parent.data.metrics["best_val_score"] == 0.75
    # the winner's interval, as scalar bounds
    low, high = sweep["summary"]["best_test_ci95"]
    assert (parent.data.metrics["best_test_ci95_low"], parent.data.metrics["best_test_ci95_high"]) == (low, high)
    assert parent.data.tags["registered_model"] == "gepa_lab-reviews"
    kids = children(client, sweep)
    assert set(kids) == {"t_ok", "t_failed"}
    assert kids["t_ok"].info.status == "FINISHED" and kids["t_failed"].info.status == "FAILED"
    assert kids["t_failed"].data.tags["error"] == "RuntimeError: LM said no (key ***)"


def test_trial_run_params_tags_metrics_artifacts(sweep, client):
    run = children(client, sweep)["t_ok"]
    cfg = sweep["cfgs"]["t_ok"]
    params = run.data.params
    assert params["lm.model"] == "sim" and params["optimizer.max_metric_calls"] == "20"
    assert params["lm.api_key_env"] == "GEPA_LAB_TEST_KEY"
    assert params["task.metric"] == cfg["task"]["metric"]
    assert set(params) == set(flatten(cfg))
    tags = run.data.tags
    assert tags["git_commit"] == tags["mlflow.source.git.commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert tags["config_hash"] == "cafe0123456789ab" and tags["corpus_manifest_hash"] == "f00d" * 16
    assert json.loads(tags["versions"]) == {"dspy": "3.4.1", "mlflow": "3.17.2"} and tags["version.dspy"] == "3.4.1"
    assert tags["gepa_lab.output_dir"] == cfg["output_dir"]
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "best_val_score")]
    assert history == [(12, 0.6), (19, 0.75), (19, 0.75)]  # two iterations, then the final value
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "candidate_val_score")] == [(6, 0.5), (12, 0.6), (19, 0.75)]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test_score")] == [(0, 0.4), (2, 0.6)]
    m = run.data.metrics
    assert m["seed_val_score"] == 0.5 and m["best_test_score"] == 0.6 and m["metric_calls"] == 19 and m["lm_calls"] == 21
    assert m["lm.task.requests"] == 19 and m["lm.reflection.completion_tokens"] == 80
    for key in ("seed_test_ci95", "best_test_ci95", "test_gain_ci95"):
        assert [m[f"{key}_low"], m[f"{key}_high"]] == pytest.approx(sweep["summary"][key]), key
    assert m["test_gain_ci95_low"] < m["test_gain_ci95_high"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "candidates.json", "program.json"} <= names
    local = client.download_artifacts(run.info.run_id, "summary.json")
    assert json.loads(Path(local).read_text())["best_val_score"] == 0.75


def test_new_sqlite_stores_start_from_one_migrated_template_and_share_nothing(tmp_path):
    cfg = MlflowConfig()
    first, second = sink_client(cfg, tmp_path / "a"), sink_client(cfg, tmp_path / "b")
    first.create_experiment("only-in-a")
    assert second.get_experiment_by_name("only-in-a") is None
    # each store made its own default experiment on first open, as MLflow does for a store it migrated itself
    assert {e.name for e in second.search_experiments()} == {"Default"}
    template = Path(sys.prefix, "var", "cache", "gepa_lab", f"mlflow-{mlflow.__version__}-empty.db")
    assert template.is_file()
    with sqlite3.connect(template) as con:
        assert con.execute("SELECT count(*) FROM experiments").fetchone() == (0,)
    create_sqlite_store(tmp_path / "a" / "mlflow.db")  # an existing store is never replaced
    assert sink_client(cfg, tmp_path / "a").get_experiment_by_name("only-in-a") is not None
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no staged copy left behind


def test_mlflow_uris_in_two_threads_at_once_leave_no_uri_set(tmp_path, monkeypatch):
    """The second thread's section waits for the first: interleaved, it would save the first's URI as "before" and
    restore it last, leaving MLFLOW_TRACKING_URI set for this process and every child it starts."""
    import threading

    from gepa_lab.tracking.mlflow_sink import mlflow_uris

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    second_inside, first_done = threading.Event(), threading.Event()

    def second():
        with mlflow_uris(uri):
            second_inside.set()
            first_done.wait(30)  # interleaved, the first section would end while this one is inside

    with mlflow_uris(uri):
        other = threading.Thread(target=second)
        other.start()
        second_inside.wait(1.0)  # it gets in only after this section ends
    first_done.set()
    other.join(30)
    assert second_inside.is_set()
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
