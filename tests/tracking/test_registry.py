"""Registration of the winner: mlflow.dspy model, new version, load-back check in a fresh process, alias."""
import os
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.models import Model

from gepa_lab.tracking.mlflow_sink import mlflow_uris
from tracking_helpers import CANARY_ENV, WINNER_INSTRUCTION


@pytest.fixture(scope="module")
def client(sweep):
    return MlflowClient(sweep["tracking_uri"], registry_uri=sweep["registry_uri"])


def test_champion_moves_after_a_passing_load_back(sweep, client):
    reg = sweep["registered"]
    assert reg["load_back_ok"] is True, reg
    assert (reg["name"], reg["version"], reg["alias"]) == ("gepa_lab-reviews", "1", "champion")
    assert reg["model_uri"] == "models:/gepa_lab-reviews/1" and reg["champion_uri"] == "models:/gepa_lab-reviews@champion"
    assert str(client.get_model_version_by_alias("gepa_lab-reviews", "champion").version) == "1"
    tags = client.get_model_version("gepa_lab-reviews", "1").tags
    assert tags["load_back_status"] == "passed" and float(tags["load_back_score"]) == reg["load_back_score"]


def test_load_back_scores_the_winner_not_the_seed(sweep):
    reg = sweep["registered"]
    assert reg["load_back"]["n"] == 5 and reg["load_back"]["errors"] == []
    # the fresh process scored exactly what the winner scores here, and the seed scores differently
    assert reg["load_back_score"] == pytest.approx(sweep["winner_score"])
    assert sweep["winner_score"] != pytest.approx(sweep["seed_score"])


def test_model_is_logged_in_the_winners_trial_run_and_records_its_lm(sweep, client):
    reg = sweep["registered"]
    run = client.get_run(reg["run_id"])
    assert run.info.run_name == "t_ok" and run.data.tags["mlflow.parentRunId"] == sweep["parent"]
    mv = client.get_model_version("gepa_lab-reviews", "1")
    assert mv.run_id == reg["run_id"]
    with mlflow_uris(sweep["registry_uri"]):
        path = mlflow.artifacts.download_artifacts(artifact_uri=reg["model_uri"])
    meta = Model.load(path).metadata["gepa_lab"]
    assert meta["lm"]["model"] == "sim" and meta["lm"]["temperature"] == 0.0 and meta["lm"]["max_tokens"] == 256
    assert meta["lm"]["api_key_env"] == CANARY_ENV and meta["lm"]["api_base"].startswith("http://127.0.0.1:")
    assert meta["config_hash"] == "cafe0123456789ab" and meta["git_commit"].startswith("0123456789")
    assert meta["corpus_manifest_hash"] == "f00d" * 16 and meta["versions"]["dspy"] == "3.4.1"
    assert list(meta["best_instructions"].values()) == [WINNER_INSTRUCTION]
    assert meta["test_scores"] == sweep["test_scores"]
    assert "api_key" not in meta["lm_config"] and meta["trial_config"]["task"]["name"] == "reviews"


def test_failed_load_back_registers_but_does_not_move_the_alias(sweep, client):
    bad = sweep["rejected"]
    assert bad["version"] == "2" and bad["load_back_ok"] is False and bad["alias"] is None
    assert "does not answer" in bad["load_back"]["error"] and "NOT moved" in bad["message"]
    assert str(client.get_model_version_by_alias("gepa_lab-reviews", "champion").version) == "1"
    tags = client.get_model_version("gepa_lab-reviews", "2").tags
    assert tags["load_back_status"] == "failed" and "does not answer" in tags["load_back_error"]


def test_the_canary_key_is_nowhere_under_the_output_dirs_nor_in_the_registry(sweep):
    key = sweep["key"].encode()
    assert os.environ[CANARY_ENV] == sweep["key"]
    files = [p for p in Path(sweep["out"]).parent.rglob("*") if p.is_file()]
    assert any(p.name == "registry.db" for p in files)
    kinds = {p.suffix for p in files}
    assert {".db", ".pkl", ".wandb", ".json"} <= kinds, kinds  # the store, the pickled model, W&B data were all written
    leaked = [str(p) for p in files if key in p.read_bytes()]
    assert leaked == []
