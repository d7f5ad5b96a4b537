"""`ray job stop` on a sweep run as a Ray job on the test bed (tests/cluster/conftest.py), issue 13 item 1: Ray sends
the job's driver SIGTERM, which stops the sweep as Ctrl-C does (everything it started gone, no summary), and the
same job submitted again finishes the sweep without running its completed trial again. The job gets the time to
stop that scripts/submit.py gives its jobs (STOP_WAIT): Ray's default of 3 s before its SIGKILL is often too short."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray.job_submission import JobSubmissionClient

from gepa_lab.results import query
from scripts.submit import STOP_WAIT
from tests.cluster.conftest import BIN
from tests.cluster.test_bed import ONE_MINIBATCH, SMALL
from tests.conftest import ROOT
from tests.support.processes import TAG, tagged_env, tagged_processes

pytestmark = pytest.mark.timeout(600)

# two trials one after the other, each a few seconds long (a slow simulator), so that the stop finds the first
# completed and the second running
SWEEP = ["sweep=demo", *ONE_MINIBATCH, *SMALL, "optimizer.max_metric_calls=200", "lm.sim.latency_ms=50",
         "sweep.space.optimizer.seed={grid:[0,1]}", "sweep.max_concurrent=1", "corpus.name=banking77_bed_job"]


def submit(bed, out: Path, tag: str, submission_id: str, *, wait: bool) -> subprocess.CompletedProcess:
    """The sweep as a Ray job, submitted with Ray's own CLI as docs/cluster.md shows; the tag in its env_vars marks
    every process of the job (its driver on the head, all the driver starts, its trials' workers)."""
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", bed.dashboard, "--submission-id", submission_id,
         "--working-dir", ".", "--runtime-env-json", json.dumps({"env_vars": {TAG: tag, **STOP_WAIT}}),
         *([] if wait else ["--no-wait"]), "--", "python", "-m", "gepa_lab.sweep", f"output_dir={out}", *SWEEP],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=bed.driver_env())


def trial_rows(out: Path) -> dict[str, dict]:
    """Each trial's row in the results' trials table, by trial id."""
    # not the hidden temp file of a write in progress
    files = [path for path in (out / "results" / "trials").glob("*.parquet") if not path.name.startswith(".")]
    rows = [pq.read_table(path).to_pylist()[0] for path in files]
    return {row["trial_id"]: row for row in rows}


def completed_work(out: Path) -> list[tuple]:
    """Each completed trial: its id, when it started and ended, its metric calls, and its rows of candidates and
    evaluations."""
    return query.connect([out]).execute(
        "SELECT trial_id, started_at, ended_at, metric_calls,"
        " (SELECT count(*) FROM candidates c WHERE c.trial_id = t.trial_id),"
        " (SELECT count(*) FROM evaluations e WHERE e.trial_id = t.trial_id)"
        " FROM trials t WHERE status = 'completed' ORDER BY trial_id").fetchall()


def one_done_one_running(out: Path) -> bool:
    if not (out / "results" / "trials").exists():
        return False
    statuses = {trial_id: row["status"] for trial_id, row in trial_rows(out).items()}
    running = [t for t, status in statuses.items() if status == "running"]
    gepa_started = [t for t in running if (out / "trials" / t / "gepa" / "gepa_state.bin").exists()]
    return "completed" in statuses.values() and bool(gepa_started)


def test_ray_job_stop_stops_a_sweep_job_like_ctrl_c_and_the_job_submitted_again_resumes(bed, tmp_path):
    out = tmp_path / "stopped-job"
    tag, _ = tagged_env()
    client = JobSubmissionClient(bed.dashboard)
    submitted = submit(bed, out, tag, f"gl-stop-{tag[:8]}", wait=False)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    job_id = f"gl-stop-{tag[:8]}"
    deadline = time.time() + 300
    while not one_done_one_running(out):
        status = client.get_job_status(job_id)
        assert not status.is_terminal() and time.time() < deadline, (status, client.get_job_logs(job_id)[-5000:])
        time.sleep(0.2)
    assert tagged_processes(tag, "gepa_lab.sim"), "the sweep's simulator is not found by its tag"

    stopped = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", bed.dashboard, job_id], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, env=bed.driver_env())
    assert stopped.returncode == 0, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert str(client.get_job_status(job_id).value) == "STOPPED"
    log = client.get_job_logs(job_id)
    # the driver stopped itself before Ray's SIGKILL, and nothing it started was restarted after Ray's SIGTERM to it
    # (Ray signals every process of the job at once)
    assert "interrupted (SIGTERM): stopped; rerun with the same output_dir to resume" in log, log[-5000:]
    assert "restarting" not in log, log[-5000:]
    deadline = time.time() + 30
    while tagged_processes(tag, "") and time.time() < deadline:
        time.sleep(0.5)
    assert not tagged_processes(tag, ""), f"the stopped job left processes running: {tagged_processes(tag, '')}"
    assert not (out / "summary.json").exists()
    [done_before] = completed_work(out)

    again = submit(bed, out, tag, f"gl-again-{tag[:8]}", wait=True)
    assert again.returncode == 0, again.stdout[-5000:] + again.stderr[-3000:]
    assert "resuming the sweep" in again.stdout, again.stdout[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["total"] == summary["trials"]["completed"] == 2
    # the completed trial was not run again: its row as it was, no more candidates or evaluations
    assert done_before in completed_work(out), (done_before, completed_work(out))
