"""Stop signals, on real processes: SIGTERM (`timeout`, Kubernetes, Slurm, `ray job stop`) and SIGHUP (a closed
terminal) stop `python -m gepa_lab.run` and the W&B agent as Ctrl-C does (everything they started stops, the GEPA
state stays, exit 128 + the signal), a rerun resumes; a run killed by SIGKILL takes its simulator with it.
The sweep's stop signals are tested with its Ctrl-C (tests/sweep/test_sweep_interrupt.py)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, run_cli
from tests.support.processes import tagged_env, tagged_processes
from tests.support.wandb_offline import wandb_records
from tests.support.corpus import TINY_CORPUS

# no lm.api_base: the run starts a simulator of its own, slow enough that each stop lands mid-compile
RUN = ["task=banking77", "tracking=none", *TINY_CORPUS, "optimizer.max_metric_calls=240",
       "optimizer.reflection_minibatch_size=4", "lm.sim.latency_ms=100"]


def start(module: str, args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def iterations_recorded(out: Path) -> int:
    folder = out / "results" / "candidates"
    return len(list(folder.glob("*.parquet"))) if folder.exists() else 0


def wait_for(done, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"no {what} within {timeout:g}s"
        time.sleep(0.2)


def none_left(tag: str, pattern: str, within: float = 10) -> list[str]:
    """The tagged processes matching pattern still alive after `within` seconds ([] as soon as none is)."""
    deadline = time.time() + within
    while (left := tagged_processes(tag, pattern)) and time.time() < deadline:
        time.sleep(0.2)
    return left


def stop_mid_compile(module: str, args: list[str], env: dict, tag: str, sig: int, out: Path, trial: Path) -> str:
    """Start `module` and, once its trial (results in out, GEPA state in trial) has recorded a GEPA iteration more
    than before, send `sig` to it alone (as `timeout` and Kubernetes do); check it exits 128 + sig with nothing it
    started left running. Its stderr."""
    before = iterations_recorded(out)
    proc = start(module, args, env)
    wait_for(lambda: iterations_recorded(out) > before and (trial / "gepa" / "gepa_state.bin").exists(), proc,
             "a new GEPA iteration")
    proc.send_signal(sig)
    name = signal.Signals(sig).name
    try:
        _, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its session: it, and its simulators with it (they die with their parent)
        proc.wait(30)
        raise AssertionError(f"{name} did not stop {module} within 180 s") from None
    assert proc.returncode == 128 + sig, f"{name}: exit {proc.returncode}\n{stderr[-3000:]}"
    assert f"interrupted ({name}): stopped; rerun with the same output_dir to resume" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not none_left(tag, "gepa_lab.sim"), f"{name} left the simulator running"
    assert_recorded_only_what_the_state_holds(out, trial)
    return stderr


def assert_recorded_only_what_the_state_holds(out: Path, trial: Path) -> None:
    """The stopped process recorded the candidates its saved GEPA state holds and no other: the rerun proposes those
    again under the same indices."""
    from gepa_lab.results.query import open_results
    from gepa_lab.trial import saved_candidates

    recorded = {idx for (idx,) in open_results(out).execute("SELECT candidate_idx FROM candidates").fetchall()}
    assert recorded == set(range(saved_candidates(trial / "gepa"))), recorded


def assert_went_on_from_saved_state(out: Path) -> None:
    """GEPA went on from its saved state: the proposals of the stopped processes kept their numbers, none reused."""
    from gepa_lab.results.query import open_results

    results = open_results(out)
    candidates = [idx for (idx,) in results.execute("SELECT candidate_idx FROM candidates WHERE candidate_idx > 0").fetchall()]
    assert candidates and len(candidates) == len(set(candidates)), candidates
    # each example scored once per candidate and split: the seed's test scores too, though each process needs them
    assert not results.execute("SELECT split, candidate_idx, example_id FROM evaluations "
                               "GROUP BY ALL HAVING count(*) > 1").fetchall()


def test_sigterm_and_sighup_stop_a_run_like_ctrl_c_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    args = [f"output_dir={out}", *RUN]
    tag, env = tagged_env()
    stop_mid_compile("gepa_lab.run", args, env, tag, signal.SIGTERM, out, out)
    assert "resuming" in stop_mid_compile("gepa_lab.run", args, env, tag, signal.SIGHUP, out, out)
    assert not (out / "summary.json").exists()
    iterations_before = iterations_recorded(out)

    done = run_cli("gepa_lab.run", *args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric_calls"] <= 240  # strict_budget: the count went on across both stops
    assert iterations_recorded(out) > iterations_before
    assert_went_on_from_saved_state(out)
    assert not tagged_processes(tag, "gepa_lab.sim")
    from gepa_lab.results.query import open_results

    # each of the three processes recorded what it sent, stopped or not
    usage = open_results(out).execute("SELECT role, requests FROM lm_usage ORDER BY role").fetchall()
    assert [role for role, _ in usage] == ["reflection"] * 3 + ["task"] * 3, usage
    assert all(requests > 0 for role, requests in usage if role == "task"), usage


def test_a_run_killed_by_sigkill_takes_its_simulator_with_it(tmp_path):
    out = tmp_path / "killed"
    tag, env = tagged_env()
    proc = start("gepa_lab.run", [f"output_dir={out}", *RUN], env)
    wait_for(lambda: (out / "gepa" / "gepa_state.bin").exists(), proc, "GEPA's first saved state")
    assert tagged_processes(tag, "gepa_lab.sim")
    proc.kill()  # the run alone: no finally runs; its simulator (a session of its own) must die with it
    proc.wait(timeout=30)
    assert not none_left(tag, "gepa_lab.sim"), "the simulator outlived its killed run"


def test_sigterm_stops_the_wandb_agent_marks_its_run_preempted_and_the_requeued_run_resumes(tmp_path):
    """W&B requeues a preempted run under the same run id (WANDB_RUN_ID), so the agent that gets it resumes the
    trial's folder."""
    out = tmp_path / "agent"
    args = ["agent", "sweep=demo", f"output_dir={out}", *RUN]
    tag, env = tagged_env()
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wb"), WANDB_RUN_ID="requeued1", WANDB_SILENT="true")
    env.pop("WANDB_SWEEP_ID", None)
    (tmp_path / "wb").mkdir()
    trial = out / "trials" / "requeued1"
    stop_mid_compile("gepa_lab.sweep.wandb_sweeps", args, env, tag, signal.SIGTERM, out, trial)
    [stopped] = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    assert "preempting" in {kind for kind, _ in wandb_records(stopped)}

    done = run_cli("gepa_lab.sweep.wandb_sweeps", *args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr
    summary = json.loads((trial / "summary.json").read_text())
    assert summary["wandb_run_id"] == "requeued1" and summary["metric_calls"] <= 240
    assert_went_on_from_saved_state(out)


# A compile's stop is deferred (gepa_lab.cli.stops_deferred): the signal handler only records it, LM calls are refused
# from then on, and the code stops where it asks. A KeyboardInterrupt raised at whatever instruction the main thread
# was running deadlocked a stopped run: it landed while the main thread held a thread pool future's lock, and the
# pool's shutdown waited forever for the worker that needed it.
DEFERRED = """
import os, signal, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
import dspy
from dspy.utils.parallelizer import ParallelExecutor
from gepa_lab import cli
from gepa_lab.lm.config import LMConfig
from gepa_lab.lm.endpoint import build_lm

lm = build_lm(LMConfig(kind="sim", model="sim", num_retries=0), sys.argv[2], role="task")
ask = lambda: lm(messages=[{"role": "user", "content": "question: hi"}], cache=False)

@cli.one_line_errors
def main():
    with cli.stops_deferred():
        ask()
        if sys.argv[1] == "pool":  # the signal lands while the main thread waits on a pool's futures
            with ThreadPoolExecutor(4) as pool:
                threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
                done = list(pool.map(lambda i: time.sleep(0.05) or i, range(40)))
            print("went on", len(done), cli.stop_requested(), flush=True)
            try:
                ask()
            except Exception as e:
                print("refused:", e, flush=True)
            cli.raise_if_stop_requested()  # where GEPA asks, before each iteration
        else:  # dspy's parallel evaluation in the main thread: its SIGINT handler cancels what it queued
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
            started = []
            ParallelExecutor(num_threads=2, disable_progress_bar=True).execute(
                lambda i: started.append(i) or time.sleep(0.1), range(200))
        print("not reached", flush=True)

main()
"""


def test_a_stop_during_a_compile_is_taken_where_the_code_asks_and_refuses_lm_calls_meanwhile(sim):
    pool = subprocess.run([sys.executable, "-c", DEFERRED, "pool", sim.url], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert pool.returncode == 128 + signal.SIGTERM, pool.stdout + pool.stderr[-3000:]
    lines = pool.stdout.splitlines()
    assert lines[0] == "went on 40 True", pool.stdout  # the pool's work was not cut off by the signal
    assert lines[1].startswith("refused:") and "not sent: stopping" in lines[1], pool.stdout
    assert "not reached" not in pool.stdout
    assert "interrupted (SIGTERM): stopped; rerun with the same output_dir to resume" in pool.stderr
    assert "Traceback" not in pool.stderr, pool.stderr[-3000:]

    evaluation = subprocess.run([sys.executable, "-c", DEFERRED, "evaluation", sim.url], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
    assert evaluation.returncode == 128 + signal.SIGINT, evaluation.stdout + evaluation.stderr[-3000:]
    assert "not reached" not in evaluation.stdout
    assert "interrupted (SIGINT)" in evaluation.stderr and "Traceback" not in evaluation.stderr, evaluation.stderr[-3000:]
