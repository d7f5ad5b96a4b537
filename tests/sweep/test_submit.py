"""A sweep submitted as a Ray job (scripts/submit.py) to a real Ray head bound to 127.0.0.1, tracked on a
real `mlflow server` (artifacts and the registered winner travel through the server), results checked after."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from gepa_lab.lm.process import ChildProcess, free_port
from gepa_lab.results import query
from tests.conftest import ROOT, wait_until_answers

BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` as a ChildProcess: stopping its process group stops the whole head."""
    dashboard, gcs_port = free_port(), free_port()
    # The agents' ports are given, not discovered: the raylet otherwise waits 15 s (hard-coded) for each agent to
    # write its port file and aborts when an agent starts slower than that (seen on 2 busy cores).
    agent_ports = [f"--{flag}={free_port()}" for flag in ("metrics-export-port", "dashboard-agent-grpc-port",
                                                           "dashboard-agent-listen-port", "runtime-env-agent-port")]
    head = ChildProcess(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
         "--include-dashboard", "true", "--disable-usage-stats", *agent_ports],
        log_path=tmp_path / "ray-head.log",
        # the job's `python` is the head's: this environment's, as on a cluster whose nodes run gepa_lab's venv
        env={**os.environ, "RAY_ADDRESS": "", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
             "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},  # SIGTERM stops it at once, not after a 30 s drain
    )
    try:
        url = f"http://127.0.0.1:{dashboard}"
        wait_until_answers(f"{url}/api/version", head)
        yield url
    finally:
        head.stop(timeout=30)
        # what `ray stop` would also do: forget this head, so a later ray.init() on this machine does not look for it
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.exists() and current.read_text().strip().endswith(f":{gcs_port}"):
            current.unlink()


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
