"""Ctrl-C stops everything the sweep started (its simulator, its local Ray) and leaves state that a rerun with
the same output_dir resumes to the end."""
import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT, run_cli
from tests.support.processes import tagged_env, tagged_processes
from tests.sweep.test_sweep_search import TINY


def left_running(tag: str) -> list[str]:
    return tagged_processes(tag, "gepa_lab.sim") + tagged_processes(tag, "raylet")


def test_ctrl_c_stops_everything_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "interrupted"
    args = ["sweep=demo", f"output_dir={out}", *TINY, "optimizer.max_metric_calls=120", "lm.sim.latency_ms=20",
            "sweep.space.optimizer.seed={grid:[0]}", "sweep.space.optimizer.reflection_minibatch_size={grid:[4,8]}"]
    tag, env = tagged_env()
    proc = subprocess.Popen([sys.executable, "-m", "gepa_lab.sweep", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    deadline = time.time() + 300
    while not list(out.glob("trials/*/gepa/gepa_state.bin")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() is not None else "timeout"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: SIGINT to the terminal's foreground process group
    assert proc.wait(timeout=180) == 130, proc.stderr.read()[-3000:]
    time.sleep(2)
    assert not left_running(tag), f"the sweep left processes running: {left_running(tag)}"
    assert not (out / "summary.json").exists()

    resumed = run_cli("gepa_lab.sweep", *args, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resuming" in resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["total"] == summary["trials"]["completed"] == 2
