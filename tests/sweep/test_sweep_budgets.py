"""The sweep's budgets, each alone: a sweep must stop on exactly the one it sets (LM tokens, cost, wall time; metric calls
are tested across a killed driver in test_sweep_crashes.py), naming it as the reason its trials ended early. And ASHA
alone, with no budget: the weak trial it stops names ASHA and the rung."""
import json
import time

import pytest

from gepa_lab.results import query
from gepa_lab.sweep.stopping import LEDGER_FILE, Ledger
from tests.conftest import run_cli
from tests.support.corpus import TINY_CORPUS

ITERATION = 2 * 4 + 20  # the most metric calls one GEPA iteration spends: two minibatches of 4 and the val set
# two trials one after the other: the budget ends the first one early, and the second one never starts
SWEEP = ["sweep=demo", *TINY_CORPUS, "tracking=none", "sweep.max_concurrent=1",
         "sweep.space.optimizer.seed={grid:[0,1]}", "sweep.space.optimizer.reflection_minibatch_size={grid:[4]}"]
PRICES = [f"{role}.price_per_1k_{kind}_tokens=1.0" for role in ("lm", "reflection_lm") for kind in ("prompt", "completion")]


def spent(con, budget: str) -> float:
    column = {"lm_tokens": "prompt_tokens + completion_tokens", "cost_usd": "cost_usd"}[budget]
    return con.execute(f"SELECT sum({column}) FROM lm_usage").fetchone()[0]


# a trial of 200 metric calls spends ~250k tokens on the simulator (~1k per rollout, its test evaluations included)
@pytest.mark.parametrize("budget, limit, max_calls, extra", [
    ("lm_tokens", 120_000, 200, ["lm.sim.latency_ms=5"]),
    ("cost_usd", 120.0, 200, ["lm.sim.latency_ms=5", *PRICES]),  # $1 per 1k tokens: the token budget's point
    # the trial, slow and long, would run for minutes; the budget's clock starts before the first trial does
    ("wall_seconds", 40, 5000, ["lm.sim.latency_ms=100"]),
])
def test_a_sweep_stops_on_exactly_the_budget_it_sets(tmp_path, budget, limit, max_calls, extra):
    out = tmp_path / budget
    result = run_cli("gepa_lab.sweep", *SWEEP, *extra, f"optimizer.max_metric_calls={max_calls}", f"output_dir={out}",
                     f"sweep.budget.{budget}={limit}", timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == {"total": 2, "completed": 0, "failed": 0, "stopped": 1, "skipped": 1}, summary["trials"]
    con = query.connect([out])
    reasons = dict(con.execute("SELECT status, error FROM trials").fetchall())
    assert reasons["stopped"].startswith(f"sweep budget {budget}={limit:g} spent")
    assert reasons["skipped"].startswith(f"sweep budget {budget}={limit:g} spent")
    (calls,) = con.execute("SELECT metric_calls FROM trials WHERE status = 'stopped'").fetchone()
    assert calls < max_calls - ITERATION  # ended early by the sweep, not by its own budget
    ledger = json.loads((out / LEDGER_FILE).read_text())  # what the sweep counted, as it counted it
    counted = ledger["wall_seconds"] if budget == "wall_seconds" else \
        sum(n for attempts in ledger[budget].values() for n in attempts.values())
    assert counted >= limit
    # the summary says it too: the budget's limit and spending as the ledger counted them, and what stopped trials
    assert summary["budget"]["limits"] == {budget: limit}
    assert summary["budget"]["spent"][budget] == pytest.approx(counted, rel=0.05 if budget == "wall_seconds" else 1e-9)
    assert summary["stopped_by"] == {f"sweep budget {budget}": 2}
    [line] = [line for line in result.stdout.splitlines() if line.startswith("trials: 2:")]
    assert f"budget {budget} " in line and f"of {limit:,.6g}" in line and f"stopped by: sweep budget {budget} (2)" in line
    if budget != "wall_seconds":
        # reached, not merely approached; passed by at most the iteration in flight and the final test evaluation
        assert limit <= spent(con, budget) < 1.5 * limit


def test_asha_alone_stops_the_weak_trial_naming_the_rung(tmp_path):
    """No budget: the half-credit trial runs after the full-credit one and scores below it at the first rung."""
    out = tmp_path / "asha"
    result = run_cli("gepa_lab.sweep", "sweep=demo", *TINY_CORPUS, "tracking=none", "sweep.max_concurrent=1",
                     "lm.sim.latency_ms=5", "optimizer.max_metric_calls=160", "sweep.scheduler=asha",
                     "sweep.asha.grace_metric_calls=40", "sweep.space.optimizer.seed={grid:[0]}",
                     "sweep.space.optimizer.reflection_minibatch_size={grid:[4]}",
                     "task.metric=tests.support.half_credit:half_credit_metric",  # the base: ships tests/ to Ray
                     "+sweep.space.task.metric={grid:[gepa_lab.tasks.classify:label_metric,"
                     "tests.support.half_credit:half_credit_metric]}",
                     f"output_dir={out}", timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    con = query.connect([out])
    trials = {json.loads(config)["task"]["metric"].rsplit(":", 1)[1]: (status, error, calls) for config, status, error, calls
              in con.execute("SELECT config_json, status, error, metric_calls FROM trials").fetchall()}
    assert trials["label_metric"][:2] == ("completed", None), trials
    status, reason, calls = trials["half_credit_metric"]
    assert status == "stopped" and reason.startswith("ASHA: below the cutoff of rung 40 metric calls"), trials
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget"]["limits"] == {} and summary["stopped_by"] == {"ASHA": 1}
    assert calls < 160 - ITERATION


def test_the_ledger_restored_from_its_file_goes_on_counting_where_the_killed_sweep_was(tmp_path):
    """In-process (the plain class the sweep's ledger actor holds): a rerun's ledger starts from the file the killed
    one kept, with a trial's metric calls as GEPA counts them (on from its saved state) and its tokens and cost per
    attempt (a resumed attempt's meter starts from zero)."""
    state = tmp_path / LEDGER_FILE
    budget = {"metric_calls": 300, "lm_tokens": 10_000, "cost_usd": 5.0, "wall_seconds": 3600}
    first = Ledger(budget, str(state))
    first.record("a", "attempt1", 120, 4000, 2.0)
    first.record("b", "attempt1", 60, 2000, 1.0)
    first.request_stop("b", "ASHA: below the cutoff of rung 40 metric calls")
    time.sleep(0.2)
    first.record("b", "attempt1", 90, 3000, 1.5)  # the last change before the kill

    rerun = Ledger(budget, str(state))
    assert rerun.spent()["metric_calls"] == 210 and rerun.spent()["lm_tokens"] == 7000
    assert rerun.spent()["wall_seconds"] >= 0.2  # the killed driver's time counts
    assert rerun.stop_reason("b").startswith("ASHA") and rerun.exhausted() is None
    rerun.record("b", "attempt2", 120, 3500, 1.75)  # b resumed: GEPA's count goes on, its meter starts from zero
    assert rerun.spent() | {"wall_seconds": 0} == {"metric_calls": 240, "lm_tokens": 10_500, "cost_usd": 5.25, "wall_seconds": 0}
    assert rerun.exhausted() == "sweep budget lm_tokens=10000 spent (10500)"
    assert Ledger(budget, str(state)).exhausted() == rerun.exhausted()  # and so would the next rerun's


def test_a_cost_budget_without_prices_is_refused_in_one_line(tmp_path):
    refused = run_cli("gepa_lab.sweep", "sweep=demo", "sweep.budget.cost_usd=1", f"output_dir={tmp_path / 'refused'}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "sweep.budget.cost_usd needs a price" in refused.stderr.strip().splitlines()[-1]
