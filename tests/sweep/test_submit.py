"""A sweep submitted as a Ray job (scripts/submit.py) to a real Ray head bound to 127.0.0.1, tracked on a
real `mlflow server` (artifacts and the registered winner travel through the server), results checked after."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from gepa_lab.lm.sim.launch import free_port
from gepa_lab.results import query
from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def stop_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until_answers(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer: " + log.read_text()[-3000:])


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` in its own process group: stopping the group stops the whole head."""
    log = tmp_path / "ray-head.log"
    dashboard, gcs_port = free_port(), free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
             "--include-dashboard", "true", "--disable-usage-stats"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            # the job's `python` is the head's: this environment's, as on a cluster whose nodes run gepa_lab's venv
            env={**os.environ, "RAY_ADDRESS": "", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        )
    try:
        url = f"http://127.0.0.1:{dashboard}"
        wait_until_answers(f"{url}/api/version", proc, log)
        yield url
    finally:
        stop_group(proc)
        # what `ray stop` would also do: forget this head, so a later ray.init() on this machine does not look for it
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.exists() and current.read_text().strip().endswith(f":{gcs_port}"):
            current.unlink()


@pytest.fixture
def mlflow_server(tmp_path):
    """A real tracking server without a local artifact root: artifacts are proxied through it."""
    root = tmp_path / "mlflow-server"
    root.mkdir()
    port = free_port()
    with open(root / "server.log", "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answers(f"{url}/health", proc, root / "server.log")
        yield url
    finally:
        stop_group(proc)


def test_submit_refuses_a_relative_output_dir():
    result = subprocess.run([sys.executable, "scripts/submit.py", "sweep=demo", "output_dir=outputs/x"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "absolute output_dir" in result.stderr


@pytest.mark.slow
def test_sweep_as_a_ray_job_tracked_on_an_mlflow_server(ray_head, mlflow_server, tmp_path):
    out = tmp_path / "job-sweep"
    result = subprocess.run(
        [sys.executable, "scripts/submit.py", "--address", ray_head, "sweep=demo", f"output_dir={out}",
         "~sweep.space.optimizer.reflection_minibatch_size", "optimizer.reflection_minibatch_size=10",
         "optimizer.max_metric_calls=120", "corpus.name=banking77_job", "corpus.splits.train=40",
         "corpus.splits.val=20", "corpus.splits.test=20", "tracking.wandb.enabled=false",
         f"tracking.mlflow.tracking_uri={mlflow_server}", "tracking.mlflow.registered_model_name=job-winner"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["total"] == summary["trials"]["completed"] == 2
    con = query.connect([out])
    assert con.execute("SELECT count(*) FROM trials WHERE status = 'completed'").fetchone()[0] == 2
    # the job prepared its own corpus (prepared corpora are git-ignored, so not uploaded) in its working copy
    assert not (ROOT / "corpora" / "banking77_job").exists()
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("job-winner", "champion")
    assert str(version.version) == str(summary["registered_model"]["version"])
    assert not (out / "mlartifacts").exists()  # artifacts went through the server
