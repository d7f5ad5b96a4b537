"""A sweep submitted as a Ray job (scripts/submit.py) to a real Ray head bound to 127.0.0.1, tracked on a
real `mlflow server` (artifacts and the registered winner travel through the server), results checked after."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from gepa_lab.servers.process import free_port
from gepa_lab.results import query
from gepa_lab.servers.ray_cluster import local_head
from tests.conftest import ROOT, wait_until_answers

BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """A Ray head with its dashboard (the job API) on 127.0.0.1, as gepa_lab starts one; yields the dashboard URL."""
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")  # the job's `python` is this environment's
    dashboard = free_port()
    with local_head(tmp_path / "ray-head.log", num_cpus=2, dashboard_port=dashboard):
        url = f"http://127.0.0.1:{dashboard}"
        wait_until_answers(f"{url}/api/version")
        yield url


def test_submit_refuses_a_relative_output_dir():
    result = subprocess.run([sys.executable, "scripts/submit.py", "sweep=demo", "output_dir=outputs/x"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "absolute output_dir" in result.stderr


@pytest.mark.slow
def test_sweep_as_a_ray_job_tracked_on_an_mlflow_server(ray_head, mlflow_server, tmp_path):
    server_url, _ = mlflow_server
    out = tmp_path / "job-sweep"
    result = subprocess.run(
        [sys.executable, "scripts/submit.py", "--address", ray_head, "sweep=demo", f"output_dir={out}",
         "~sweep.space.optimizer.reflection_minibatch_size", "optimizer.reflection_minibatch_size=10",
         "sweep.space.optimizer.seed={grid:[0]}",  # one trial: the job, not the search, is under test here
         "optimizer.max_metric_calls=120", "corpus.name=banking77_job", "corpus.splits.train=40",
         "corpus.splits.val=20", "corpus.splits.test=20", "tracking.wandb.enabled=false",
         f"tracking.mlflow.tracking_uri={server_url}", "tracking.mlflow.registered_model_name=job-winner"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["total"] == summary["trials"]["completed"] == 1
    con = query.connect([out])
    assert con.execute("SELECT count(*) FROM trials WHERE status = 'completed'").fetchone()[0] == 1
    # the job prepared its own corpus (prepared corpora are git-ignored, so not uploaded) in its working copy
    assert not (ROOT / "corpora" / "banking77_job").exists()
    client = MlflowClient(server_url)
    version = client.get_model_version_by_alias("job-winner", "champion")
    assert str(version.version) == str(summary["registered_model"]["version"])
    assert not (out / "mlartifacts").exists()  # artifacts went through the server
