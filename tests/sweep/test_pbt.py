"""Population-based search (sweep.scheduler=pbt): one small PBT sweep of two trials serves every assertion. Its driver
is killed after the first exploit and the same command is run again, which must finish it. Then: the exploited
trial's GEPA state holds the donor's instructions, no trial failed, the ledger counts what each segment executed
(never a donor's spend), the lineage is unique, and so are the candidates per segment (a segment's indices restart
from its donor's); a winner's test scores are its last segment's. And the refusals, before anything starts."""
import json
import signal
import os
import time
from pathlib import Path

import pytest
from gepa.core.state import GEPAState

from gepa_lab.results import query
from gepa_lab.sweep.driver import winner_test_scores
from tests.conftest import run_cli
from tests.support.processes import tagged_env, tagged_processes
from tests.sweep.test_sweep_crashes import start_sweep, wait_for
from tests.support.corpus import TINY_CORPUS

PBT = ["sweep=demo", *TINY_CORPUS, "tracking=none", "sweep.max_concurrent=2", "sweep.scheduler=pbt",
       "sweep.pbt.interval_metric_calls=40", "sweep.pbt.quantile_fraction=0.5",
       "++sweep.pbt.mutations={optimizer.reflection_minibatch_size:[4,6]}",
       "sweep.space.optimizer.seed={grid:[0,1]}", "sweep.space.optimizer.reflection_minibatch_size={grid:[4]}"]


def segments(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("trials/*/segments/*/segment.json"))]


def state(segment: dict) -> GEPAState:
    return GEPAState.load(str(Path(segment["config"]["output_dir"]) / "gepa"))


@pytest.fixture(scope="module")
def pbt_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("pbt") / "sweep"
    tag, env = tagged_env()
    args = [*PBT, "lm.sim.latency_ms=40", "optimizer.max_metric_calls=240", f"output_dir={out}"]
    proc = start_sweep(args, env)
    try:
        # an exploited segment that has run an iteration and reported since: a kill earlier loses the exploit (Tune's
        # saved experiment state predates it)
        wait_for(lambda: [s for s in segments(out) if s["number"] >= 1 and s["base_calls"] > 0
                          and s["executed"] > s["before"] + s["rescored"]], proc, "an exploited segment's iteration")
        proc.send_signal(signal.SIGKILL)  # the driver alone: the rerun must resume mid-population
        proc.wait(timeout=60)
        for _ in range(40):  # its Ray node goes down with it
            if not tagged_processes(tag, "raylet"):
                break
            time.sleep(0.5)
        assert not (out / "summary.json").exists()
    finally:
        if proc.returncode is None:  # the test failed before the kill
            os.killpg(proc.pid, signal.SIGKILL)
    resumed = run_cli("gepa_lab.sweep", *args, env=env, timeout=900)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr[-5000:]
    return out, json.loads((out / "summary.json").read_text())


def test_a_resumed_pbt_sweep_finishes_and_no_trial_failed_after_its_pauses(pbt_sweep):
    out, summary = pbt_sweep
    assert summary["trials"] == {"total": 2, "completed": 2, "failed": 0, "stopped": 0, "skipped": 0}
    statuses = [s for (s,) in query.connect([out]).execute("SELECT status FROM trials").fetchall()]
    assert statuses == ["completed", "completed"]


def test_after_an_exploit_the_weak_trial_continues_from_the_donors_gepa_state(pbt_sweep):
    out, _ = pbt_sweep
    con = query.connect([out])
    inherited = con.execute("SELECT trial_id, segment, candidate_idx, origin_trial_id, origin_segment, origin_candidate_idx "
                            "FROM lineage WHERE origin_trial_id <> trial_id").fetchall()
    assert inherited, "no trial continued from another trial's state"
    by_key = {(s["trial_id"], s["number"]): s for s in segments(out)}
    for trial, segment, idx, donor, donor_segment, donor_idx in inherited:
        mine = state(by_key[(trial, segment)]).program_candidates[idx]
        donors = state(by_key[(donor, donor_segment)]).program_candidates[donor_idx]
        assert mine == donors  # the donor's instructions, in the weak trial's own GEPA state


def test_budgets_count_what_each_segment_executed_never_the_donors_spend(pbt_sweep):
    out, _ = pbt_sweep
    executed: dict[str, int] = {}
    for s in segments(out):
        # GEPA's count in the segment's final state, minus the count it started from, plus its uncounted seed re-scores
        executed[s["trial_id"]] = executed.get(s["trial_id"], 0) + state(s).total_num_evals - s["base_calls"] + s["rescored"]
    recorded = dict(query.connect([out]).execute("SELECT trial_id, metric_calls FROM trials").fetchall())
    assert recorded == executed
    ledger = json.loads((out / "ledger.json").read_text())["metric_calls"]
    assert sum(ledger.values()) == sum(executed.values())
    # the subtraction was exercised: a segment started from a donor's state that had spent calls
    assert any(s["base_calls"] > 0 and s["number"] >= 1 for s in segments(out))

def test_the_lineage_is_unique_and_covers_every_candidate_of_every_segment(pbt_sweep):
    out, _ = pbt_sweep
    con = query.connect([out])
    total, distinct = con.execute("SELECT count(*), count(DISTINCT (trial_id, segment, candidate_idx)) FROM lineage").fetchone()
    assert total == distinct
    for s in segments(out):
        indices = {i for (i,) in con.execute("SELECT candidate_idx FROM lineage WHERE trial_id = ? AND segment = ?",
                                             [s["trial_id"], s["number"]]).fetchall()}
        assert indices == set(range(len(state(s).program_candidates)))


def test_candidates_are_unique_per_trial_segment_and_index(pbt_sweep):
    out, _ = pbt_sweep
    con = query.connect([out])
    total, distinct = con.execute(
        "SELECT count(*), count(DISTINCT (trial_id, segment, candidate_idx)) FROM candidates").fetchone()
    assert total == distinct
    # an exploited segment's own candidates, apart from its earlier segments' under the same indices
    made = {(t, s) for t, s in con.execute("SELECT DISTINCT trial_id, segment FROM candidates").fetchall()}
    assert any(s["number"] >= 1 and (s["trial_id"], s["number"]) in made for s in segments(out) if s["donor"])


def test_a_winners_test_scores_are_its_last_segments(pbt_sweep):
    out, _ = pbt_sweep
    con = query.connect([out])
    last: dict[str, int] = {}
    for s in segments(out):
        last[s["trial_id"]] = max(last.get(s["trial_id"], 0), s["number"])
    assert any(number >= 1 for number in last.values())
    test_examples = 20
    for trial_id, segment, best_idx, best_test in con.execute(
            "SELECT trial_id, segment, best_candidate_idx, best_test_score FROM trials").fetchall():
        trial_summary = json.loads((out / "trials" / trial_id / "summary.json").read_text())
        assert segment == trial_summary["segment"] == last[trial_id]
        scores = winner_test_scores(out, trial_id, trial_summary)
        assert len(scores) == test_examples and sum(scores.values()) / len(scores) == pytest.approx(best_test)
        recorded = con.execute("SELECT DISTINCT example_id, score FROM evaluations WHERE trial_id = ? AND segment = ? "
                               "AND split = 'test' AND candidate_idx = ?", [trial_id, segment, best_idx]).fetchall()
        assert dict(recorded) == scores


def test_the_results_record_each_trials_config_not_its_segments_budget(pbt_sweep):
    """A segment runs with a budget in GEPA's own count (its donor's spend included): not a knob the user swept, so the
    swept keys the results show are the sweep's and the mutation's only."""
    out, _ = pbt_sweep
    configs = [c for (c,) in query.connect([out]).execute("SELECT config_json FROM trials").fetchall()]
    swept = {key for params in query.varying_params(configs).values() for key in params}
    assert swept == {"optimizer.seed", "optimizer.reflection_minibatch_size"}, swept
    assert {json.loads(c)["optimizer"]["max_metric_calls"] for c in configs} == {240}


def test_lm_usage_is_recorded_per_segment(pbt_sweep):
    out, _ = pbt_sweep
    recorded = set(query.connect([out]).execute("SELECT DISTINCT trial_id, segment FROM lm_usage").fetchall())
    assert recorded <= {(s["trial_id"], s["number"]) for s in segments(out)}, recorded
    assert any(segment >= 1 for _, segment in recorded), recorded  # an exploited segment's own use


@pytest.mark.parametrize("override, says", [
    ("sweep.search=optuna", "sweep.scheduler=pbt takes sweep.search=grid or random"),
    ("++sweep.pbt.mutations={optimizer.max_metric_calls:[10,20]}", "optimizer.max_metric_calls may not change mid-trial"),
    ("++sweep.pbt.mutations={lm.model:[a,b]}", "lm.model may not change mid-trial"),
])
def test_a_pbt_sweep_it_cannot_run_is_refused_in_one_line_before_anything_starts(tmp_path, override, says):
    out = tmp_path / "refused"
    result = run_cli("gepa_lab.sweep", *PBT, override, f"output_dir={out}", timeout=300)
    assert result.returncode != 0
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_a_segment_a_killed_process_made_only_in_part_is_made_again(tmp_path):
    """A segment exists once its segment.json does. The fresh-clone run met a folder left without one by a process
    killed while making it: its copy of a donor's GEPA state was loaded into the segment made again there, which then
    held candidates its lineage (and budget) knew nothing of."""
    from gepa_lab.compose import compose
    from gepa_lab.config.load import load_config
    from gepa_lab.servers.ray_cluster import NodeChecks
    from gepa_lab.sweep.config import SweepConfig
    from gepa_lab.sweep.pbt import open_segment, segments_dir
    from gepa_lab.sweep.trainable import SweepContext
    from gepa_lab.trial import STATE_FILE

    cfg = load_config(compose("sweep", ["sweep=demo", *TINY_CORPUS, "eval.num_threads=4", f"output_dir={tmp_path}"]),
                      SweepConfig)
    ctx = SweepContext(sweep_id="s", output_dir=str(tmp_path), base_config=cfg.base_run(), endpoints={}, eval_threads={},
                       node_checks=NodeChecks(str(tmp_path), "", (), frozenset()))
    left = segments_dir(ctx, "t") / "000" / "gepa"
    left.mkdir(parents=True)
    (left / STATE_FILE).write_bytes(b"a donor's state, copied in before the kill")
    segment = open_segment(ctx, {"optimizer.seed": 0}, "t", None)
    assert segment.number == 0 and segment.donor is None and not (segment.dir / "gepa" / STATE_FILE).exists()
