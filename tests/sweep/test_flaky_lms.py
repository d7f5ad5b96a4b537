"""Flaky LMs (issue 13, item 4), on real sweeps against simulators the test starts (so their /stats outlive the sweep):

- replicas answering 10% HTTP 500, 5% HTTP 429 and 1% hangs (shorter than the client's timeout), with retries enough
  that no call fails for good: every trial completes with exactly the scores of the same sweep without faults, and
  every error a replica returned is either one the trials' LM accounting saw or one of the router's failovers;
- an endpoint that goes away for good mid-sweep: the trial that needs it fails with one line naming it, the other
  finishes, the results tables and the final table say so, and the sweep exits 3 (some trials failed);
- a sweep none of whose trials completed (the user's metric raises on every example) exits 4."""
import json
import re
import subprocess
import sys
import threading
import time

import pytest

from gepa_lab.cli import one_line_errors
from gepa_lab.lm.endpoint import LMUnavailable
from gepa_lab.results import query
from gepa_lab.servers.simulator import start_simulator
from gepa_lab.sweep.__main__ import exit_status
from tests.conftest import ROOT, run_cli
from tests.support.processes import tagged_env
from tests.sweep.test_sweep_interrupt import left_running
from tests.sweep.test_sweep_lm_edge import scores_by_params
from tests.sweep.test_sweep_search import TINY
from tests.test_user_code import SUPPORT

RAY_WORKER_LINE = re.compile(r"(\x1b\[\d+m)?\(\w+ pid=\d+")  # Ray's prefix of what a worker printed

# two trials (minibatch 4 and 8), short; the cache off, so every rollout reaches the replicas and meets their faults
SMALL = ["sweep=demo", *TINY, "cache=off", "optimizer.max_metric_calls=60", "optimizer.reflection_minibatch_size=8",
         "sweep.space.optimizer.seed={grid:[0]}", "sweep.space.optimizer.reflection_minibatch_size={grid:[4,8]}"]
FAULTS = dict(error_rate=0.10, rate_limit_rate=0.05, hang_rate=0.01, hang_s=1.0, retry_after_s=0.2)
# lm.timeout_s (60 s) outlasts a hang: the replica answers 504, which the router fails over or the client retries
RETRIES = [f"{role}.{key}" for role in ("lm", "reflection_lm") for key in ("num_retries=12", "retry_backoff_s=0.05")]
ERROR_KINDS = ("500", "429", "hang")


def sweep_on_two_replicas(out, faults: dict) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """The sweep with both LM roles on two replicas behind its router (different fault seeds, so a failover can
    succeed); the replicas' /stats after it."""
    with start_simulator(latency_ms=5, seed=1, **faults) as a, start_simulator(latency_ms=5, seed=2, **faults) as b:
        result = run_cli("gepa_lab.sweep", *SMALL, f"output_dir={out}", *RETRIES,
                         f"lm.api_base=[{a.url},{b.url}]", f"reflection_lm.api_base=[{a.url},{b.url}]", timeout=1200)
        return result, [a.stats(), b.stats()]


@pytest.fixture(scope="module")
def flaky_and_steady(tmp_path_factory):
    root = tmp_path_factory.mktemp("flaky")
    return {name: (root / name, *sweep_on_two_replicas(root / name, faults))
            for name, faults in (("flaky", FAULTS), ("steady", {}))}


def test_faults_retried_change_no_score(flaky_and_steady):
    for name, (out, result, _) in flaky_and_steady.items():
        assert result.returncode == 0, (name, result.stdout[-3000:] + result.stderr[-5000:])
    (flaky, _, stats), (steady, _, _) = flaky_and_steady["flaky"], flaky_and_steady["steady"]
    assert all(sum(s["errors"][kind] for s in stats) > 0 for kind in ERROR_KINDS), stats  # every fault happened
    statuses = query.connect([flaky]).execute("SELECT status FROM trials").fetchall()
    assert statuses == [("completed",), ("completed",)], statuses
    assert scores_by_params(flaky) == scores_by_params(steady)  # a retried request gets the answer the first try would have got


def test_every_replica_error_is_a_client_error_or_a_failover(flaky_and_steady):
    out, result, stats = flaky_and_steady["flaky"]
    assert result.returncode == 0, result.stderr[-5000:]
    usage = [json.loads(p.read_text())["lm_usage"] for p in sorted(out.glob("trials/*/summary.json"))]
    assert len(usage) == 2
    total = {key: sum(u[role][key] for u in usage for role in ("task", "reflection"))
             for key in ("errors", "retries", "failovers", "attempts", "failed_requests")}
    replica_errors = sum(s["errors"][kind] for s in stats for kind in ERROR_KINDS)
    assert total["failed_requests"] == 0 and total["retries"] > 0 and total["failovers"] > 0, total
    assert replica_errors == total["errors"] + total["failovers"], (replica_errors, total, stats)
    assert total["attempts"] + total["failovers"] == sum(s["requests_received"] for s in stats)
    # and so in the results' lm_usage table
    table = query.connect([out]).execute("SELECT sum(errors), sum(retries), sum(failovers) FROM lm_usage").fetchone()
    assert table == (total["errors"], total["retries"], total["failovers"])


def test_an_endpoint_gone_mid_sweep_fails_only_the_trials_that_need_it(tmp_path):
    out = tmp_path / "gone"
    with start_simulator(latency_ms=5) as stays, start_simulator(latency_ms=5) as goes:
        args = [*SMALL, f"output_dir={out}", "sweep.space.optimizer.reflection_minibatch_size={grid:[4]}",
                f"+sweep.space.lm.api_base={{grid:['{stays.url}','{goes.url}']}}", f"reflection_lm.api_base={stays.url}",
                "lm.num_retries=2", "lm.retry_backoff_s=0.05"]
        proc = subprocess.Popen([sys.executable, "-m", "gepa_lab.sweep", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        served_before = []

        def stop_once_in_use() -> None:  # mid-trial: past the seed's test evaluation (20 examples), into GEPA's
            deadline = time.time() + 600
            while proc.poll() is None and time.time() < deadline:
                if (served := goes.stats()["requests_served"]) >= 30:
                    served_before.append(served)
                    goes.stop()
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=stop_once_in_use)
        killer.start()
        stdout, stderr = proc.communicate(timeout=1200)
        killer.join()
    assert served_before, "the endpoint was never used"
    assert proc.returncode == 3, stdout[-3000:] + stderr[-5000:]
    rows = query.connect([out]).execute("SELECT config_json, status, error, best_val_score FROM trials").fetchall()
    by_base = {json.loads(c)["params"]["lm.api_base"]: (status, error, best) for c, status, error, best in rows}
    assert by_base[stays.url][0] == "completed" and by_base[stays.url][2] is not None, by_base
    status, error, _ = by_base[goes.url]
    assert status == "failed" and error.startswith("LMUnavailable: the task LM stopped answering"), error
    assert goes.url in error and "\n" not in error, error
    failed_id = next(r[0] for r in query.connect([out]).execute("SELECT trial_id FROM trials WHERE status = 'failed'").fetchall())
    assert " ".join(f"trial {failed_id} failed: {error}".split()) in " ".join(stdout.split())  # its line, after the table
    assert sorted(final_table_statuses(stdout)) == ["completed", "failed"], stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["completed"] == summary["trials"]["failed"] == 1
    assert f"Trial task failed for trial gepa_trial_{failed_id}: {error.split(': ', 1)[1]}" in stderr, stderr[-5000:]
    # Tune's log of the failure is its line, not a traceback. Lines a worker printed are Ray's to print: a worker that
    # Tune stops may take Ray's SIGTERM handler (SystemExit) inside a garbage-collection callback, printed as ignored
    driver_lines = [line for line in stderr.splitlines() if not RAY_WORKER_LINE.match(line)]
    assert not [line for line in driver_lines if "Traceback" in line], stderr[-5000:]


def final_table_statuses(stdout: str) -> list[str]:
    """The status of each ranked row of the final table the sweep printed."""
    table = stdout[:stdout.index("\ntrials: ")]
    rows = [line.split("│") for line in table.splitlines() if line.startswith("│")]
    return [cells[3].strip() for cells in rows if cells[1].strip()]


def test_a_sweep_none_of_whose_trials_completed_exits_4(tmp_path):
    out = tmp_path / "none"
    metric = f"{SUPPORT}:metric_reading_a_missing_field"  # raises on every example: each trial stops before GEPA
    tag, env = tagged_env()
    result = run_cli("gepa_lab.sweep", *SMALL, f"output_dir={out}", f"task.metric={metric}", env=env, timeout=600)
    assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-5000:]
    rows = query.connect([out]).execute("SELECT trial_id, status, error FROM trials ORDER BY trial_id").fetchall()
    assert len(rows) == 2 and {status for _, status, _ in rows} == {"failed"}, rows
    for trial_id, _, error in rows:
        assert error.startswith("UserCodeError: ") and f"task.metric {metric} on example " in error, error
        assert "customer_tier" in error and "so GEPA was not started" in error and "\n" not in error, error
        assert " ".join(f"trial {trial_id} failed: {error}".split()) in " ".join(result.stdout.split())
    assert final_table_statuses(result.stdout) == ["failed", "failed"], result.stdout[-3000:]
    assert "trials: 2: 2 failed" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == {"total": 2, "completed": 0, "stopped": 0, "skipped": 0, "failed": 2}
    assert summary["best_trial_id"] is None and summary["winners"] == {} and summary["registered_model"] is None
    assert not left_running(tag), f"the sweep left processes running: {left_running(tag)}"


def test_exit_status_says_whether_trials_failed(capsys):
    line = "the task LM stopped answering, so the trial ended: LM endpoint http://127.0.0.1:9/v1 (model sim): ..."

    @one_line_errors
    def run_whose_lm_went_away():
        raise LMUnavailable(line)

    with pytest.raises(SystemExit) as exited:
        run_whose_lm_went_away()
    assert exited.value.code == 4  # gepa_lab.run: nothing completed
    assert capsys.readouterr().err == f"error: {line}\n"
    assert exit_status({"total": 3, "completed": 2, "stopped": 0, "failed": 0, "skipped": 1}) == 0
    assert exit_status({"total": 3, "completed": 1, "stopped": 0, "failed": 2, "skipped": 0}) == 3
    assert exit_status({"total": 3, "completed": 0, "stopped": 1, "failed": 2, "skipped": 0}) == 3
    assert exit_status({"total": 2, "completed": 0, "stopped": 0, "failed": 2, "skipped": 0}) == 4
