"""Ctrl-C, and SIGTERM (what `timeout`, Kubernetes, Slurm and `ray job stop` send), stop everything the sweep
started (its simulators, router, local Ray) and leave state that a rerun with the same output_dir resumes to the end."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, run_cli
from tests.support.processes import tagged_env, tagged_processes
from tests.sweep.test_sweep_search import TINY


def left_running(tag: str) -> list[str]:
    return [*tagged_processes(tag, "gepa_lab.sim"), *tagged_processes(tag, "gepa_lab.servers.router"),
            *tagged_processes(tag, "raylet")]


def iterations_recorded(out: Path) -> int:
    folder = out / "results" / "candidates"
    return len(list(folder.glob("*.parquet"))) if folder.exists() else 0


def stop_mid_sweep(args: list[str], env: dict, out: Path, sig: int, *, whole_group: bool) -> str:
    """Start the sweep; once a trial has recorded a GEPA iteration more than before, send `sig` (to the whole process
    group, as Ctrl-C in a terminal does, or to the driver alone, as `timeout` and Kubernetes do); it must exit
    128 + sig with nothing it started left running and no summary. Its stderr."""
    before = iterations_recorded(out)
    proc = subprocess.Popen([sys.executable, "-m", "gepa_lab.sweep", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    deadline = time.time() + 300
    while not (list(out.glob("trials/*/gepa/gepa_state.bin")) and iterations_recorded(out) > before):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() is not None else "timeout"
        time.sleep(0.5)
    if whole_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert f"interrupted ({signal.Signals(sig).name})" in stderr, stderr[-3000:]
    deadline = time.time() + 10
    while left_running(env["GEPA_LAB_TEST_TAG"]) and time.time() < deadline:
        time.sleep(0.5)
    assert not left_running(env["GEPA_LAB_TEST_TAG"]), f"the sweep left processes running: {left_running(env['GEPA_LAB_TEST_TAG'])}"
    assert not (out / "summary.json").exists()
    return stderr


def test_ctrl_c_and_sigterm_stop_everything_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "interrupted"
    args = ["sweep=demo", f"output_dir={out}", *TINY, "optimizer.max_metric_calls=120", "lm.sim.latency_ms=20",
            "sweep.space.optimizer.seed={grid:[0]}", "sweep.space.optimizer.reflection_minibatch_size={grid:[4,8]}"]
    _, env = tagged_env()
    stop_mid_sweep(args, env, out, signal.SIGINT, whole_group=True)  # Ctrl-C: SIGINT to the foreground process group
    assert "resuming" in stop_mid_sweep(args, env, out, signal.SIGTERM, whole_group=False)

    resumed = run_cli("gepa_lab.sweep", *args, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resuming" in resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["total"] == summary["trials"]["completed"] == 2
