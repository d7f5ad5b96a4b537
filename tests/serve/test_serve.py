"""gepa_lab.serve: load a registered winner, bind it to a live LM, predict; the load-back check CLI."""
import json
import os
import subprocess
import sys

import pytest

from gepa_lab.serve import ServeError, check, load_model
from tracking_helpers import CANARY_ENV

CHAMPION = "models:/gepa_lab-reviews@champion"


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gepa_lab.serve", *args], capture_output=True, text=True, env=env, timeout=300)


def test_check_cli_passes_on_the_champion_against_a_new_endpoint(sweep, sim):
    proc = run_cli("check", "--model-uri", CHAMPION, "--tracking-uri", sweep["registry_uri"], "--n", "5", "--api-base", sim.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] is True and result["n"] == 5 and result["errors"] == []
    assert result["score"] == pytest.approx(sweep["winner_score"])
    assert result["lm"]["api_base"] == sim.url and result["lm"]["model"] == "sim"
    assert "load-back check passed" in proc.stderr and f"{result['score']:.4f}" in proc.stderr
    assert sweep["key"] not in proc.stdout + proc.stderr


def test_check_cli_fails_without_the_key(sweep, sim, monkeypatch, capsys):
    from gepa_lab.serve.__main__ import main

    monkeypatch.delenv(CANARY_ENV)
    rc = main(["check", "--model-uri", "models:/gepa_lab-reviews/1", "--tracking-uri", sweep["registry_uri"], "--api-base", sim.url])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "load-back check FAILED" in err and f"environment variable {CANARY_ENV}" in err
    assert json.loads(out.strip().splitlines()[-1])["ok"] is False


def test_load_bind_predict_in_process(sweep, sim):
    served = load_model(CHAMPION, sweep["registry_uri"])
    assert served.optimized_for["model"] == "sim" and served.optimized_for["api_key_env"] == CANARY_ENV
    served.bind(api_base=sim.url)
    # the winner's instruction carries a rule the simulator follows: "happy" -> positive
    assert served.predict(review="So happy with this kettle.").sentiment == "positive"
    assert served.lm_info["api_base"] == sim.url


def test_wrong_key_and_unknown_model_are_clear_errors(sweep, sim, monkeypatch):
    monkeypatch.setenv(CANARY_ENV, "sk-wrong-0000000000000000")
    with pytest.raises(ServeError, match="refuses the API key"):
        check("models:/gepa_lab-reviews/1", sweep["registry_uri"], n=2, api_base=sim.url)
    with pytest.raises(ServeError, match="cannot load models:/no-such-model/1"):
        load_model("models:/no-such-model/1", sweep["registry_uri"])


def test_without_a_uri_the_project_registry_is_used_never_mlflow_db_in_the_working_folder(tmp_path, monkeypatch):
    """MLflow's own default is sqlite:///mlflow.db in the current folder: serving without a URI created one there."""
    from gepa_lab.tracking.registry import default_registry_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_registry_uri().endswith("/outputs/registry.db")
    work, data = tmp_path / "work", tmp_path / "data"
    work.mkdir(), data.mkdir()
    (data / "in.csv").write_text("text\ngreat\n")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "gepa_lab.serve", "batch", "model=models:/nobody@champion",
                           f"input={data / 'in.csv'}", f"output={data / 'out.parquet'}"],
                          capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "registry.db" in proc.stderr, proc.stderr
    assert list(work.iterdir()) == [] and not (data / "out.parquet").exists()
    with pytest.raises(ServeError, match="no MLflow store at"):
        load_model("models:/nobody@champion", f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()
