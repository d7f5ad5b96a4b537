"""GEPA 0.1.4's typed knobs (optimizer.proposal_sampling, proposal_selection, stop.*) and the trial's caps (max_lm_tokens,
max_wall_seconds, max_cost_usd) take effect: each test runs a real compile in-process (gepa_lab.harness against the
session's simulator, the small example_csv corpus) and reads what GEPA did from its own log (compile.log), the summary
and the results tables; a knob that is ignored changes what they show."""
from __future__ import annotations

import collections
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gepa_lab.config.load import validate
from gepa_lab.config.schema import RunConfig
from gepa_lab.errors import ConfigError
from gepa_lab.events import Event
from gepa_lab.harness import harnessed_trial
from gepa_lab.lm.accounting import UsageMeter
from gepa_lab.results.query import open_results
from gepa_lab.servers.serving import Endpoint
from gepa_lab.trial import load_task, trial_stops
from tests.conftest import run_cli
from tests.tracking.tracking_helpers import run_config

UNTRACKED = {"wandb": {"enabled": False}, "mlflow": {"enabled": False}}
VAL = 6  # example_csv's val split
# several proposals per iteration, every minibatch scored in full (skip_perfect_score would skip a perfect one)
THREE_PROPOSALS = {"proposal_sampling": "independent(3)", "skip_perfect_score": False, "use_merge": False}


def config(out: Path, optimizer: dict | None = None, **top) -> RunConfig:
    base = run_config(out, tracking=UNTRACKED)
    return validate(RunConfig, {**base, **top, "optimizer": {**base["optimizer"], **(optimizer or {})}})


class Recorder:
    """A sink keeping the trial's events."""

    def __init__(self):
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)

    def iterations(self) -> list[dict]:
        return [e.data for e in self.events if e.kind == "iteration"]


def compile_in_process(cfg: RunConfig, simulator, recorder: Recorder | None = None) -> dict:
    endpoints = {"task": Endpoint(cfg.lm, simulator.url), "reflection": Endpoint(cfg.reflection_lm, simulator.url)}
    return harnessed_trial(cfg, root=Path(cfg.output_dir), trial_id="run", endpoints=endpoints,
                           sinks=[recorder] if recorder else ())


def proposals_per_iteration(out: Path) -> dict[int, int]:
    """From GEPA's own log: how many new instruction texts each iteration proposed (one component per program)."""
    log = (out / "compile.log").read_text()
    return dict(collections.Counter(int(i) for i in re.findall(r"Iteration (\d+): Proposed new text for ", log)))


def candidates_per_iteration(out: Path) -> dict[int, int]:
    con = open_results(out)
    return dict(con.execute("SELECT iteration, count(*) FROM candidates WHERE iteration > 0 GROUP BY 1").fetchall())


def trials_row(out: Path) -> dict:
    con = open_results(out)
    cursor = con.execute("SELECT status, error, gepa_stop_reason, iterations, proposals FROM trials")
    return dict(zip([d[0] for d in cursor.description], cursor.fetchone()))


# -- validation: refused before anything starts, in one line ---------------------------------------------------------

@pytest.mark.parametrize("optimizer, message", [
    ({"proposal_sampling": "pxn(2)"}, "optimizer.proposal_sampling: Value error, expected one of single, same_parent(n), "
                                      "independent(n), pxn(p, n), each argument an integer >= 1, got 'pxn(2)'"),
    ({"proposal_sampling": "independent(0)"}, "optimizer.proposal_sampling"),
    ({"proposal_selection": "best"}, "optimizer.proposal_selection: Value error, expected one of all_improvements, "
                                     "best_improvement, top_k(k)"),
    ({"acceptance_criterion": "greedy"}, "optimizer.acceptance_criterion"),
    ({"candidate_selection_strategy": "random"}, "optimizer.candidate_selection_strategy"),
    ({"stop": {"timeout_seconds": -1}}, "optimizer.stop.timeout_seconds"),
    ({"stop": {"patience": 3}}, "optimizer.stop.patience"),
    ({"gepa_kwargs": {"sampling_strategy": "x"}}, "gepa_kwargs.sampling_strategy is set by dspy.GEPA or gepa_lab; "
                                                  "set optimizer.proposal_sampling"),
    ({"gepa_kwargs": {"candidate_selection_strategy": "pareto"}}, "set optimizer.candidate_selection_strategy"),
    ({"gepa_kwargs": {"module_selector": "all"}}, "set optimizer.component_selector"),
    ({"gepa_kwargs": {"stop_callbacks": []}}, "set optimizer.stop (GEPA's stop conditions)"),
    ({"gepa_kwargs": {"max_reflection_cost": 1.0}}, "set optimizer.max_cost_usd"),
    ({"max_cost_usd": 0.5}, "optimizer.max_cost_usd needs a price"),
])
def test_bad_knobs_are_refused_in_one_line_naming_the_key(tmp_path, optimizer, message):
    with pytest.raises(ConfigError) as refused:
        config(tmp_path, optimizer)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_budget_that_cannot_pay_for_one_iteration_is_refused_with_the_budget_it_needs(tmp_path):
    # seed val pass 6 + one iteration: 2 x 3 (minibatches) + 6 (val); a merge costs 5 + 6
    with pytest.raises(ConfigError, match=r"max_metric_calls=17 cannot pay for one GEPA iteration: it needs at least 18, "
                                        r"the seed.s validation pass \(6\) plus the most one iteration can cost \(12"):
        config(tmp_path, {"max_metric_calls": 17})
    config(tmp_path, {"max_metric_calls": 18})
    # three proposals, each maybe accepted: 6 + 3 x (2 x 3) + 3 x 6 = 42
    with pytest.raises(ConfigError, match="at least 42,"):
        config(tmp_path, {"max_metric_calls": 41, **THREE_PROPOSALS})
    # only the best of them joins the pool: 6 + 18 + 6
    config(tmp_path, {"max_metric_calls": 30, **THREE_PROPOSALS, "proposal_selection": "best_improvement"})
    # without the strict budget GEPA starts an iteration while it has calls left after the seed's validation pass
    with pytest.raises(ConfigError, match=r"at least 7, .* plus one call"):
        config(tmp_path, {"max_metric_calls": 6, "strict_budget": False})


def test_the_new_users_budget_is_refused_by_the_cli_before_anything_starts(tmp_path):
    # the issue's case: banking77's 150 val examples, minibatch 30, 300 calls (one iteration needs 150 + 60 + 150)
    out = tmp_path / "refused"
    done = run_cli("gepa_lab.run", "task=banking77", "tracking=none", f"output_dir={out}", "optimizer.max_metric_calls=300")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "optimizer.max_metric_calls=300 cannot pay for one GEPA iteration: it needs at least 360" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (out / "gepa").exists() and not (out / "summary.json").exists()


def test_the_timeout_clock_starts_when_gepa_starts(tmp_path):
    cfg = config(tmp_path, {"stop": {"timeout_seconds": 0.2}})
    stops = trial_stops(cfg, load_task(cfg), UsageMeter(), time.time())
    time.sleep(0.3)  # the seed's test evaluation: not GEPA's time
    stops.on_optimization_start({})
    state = SimpleNamespace(total_num_evals=0)  # what the budget's check reads of GEPA's state
    assert not stops(state)
    time.sleep(0.3)
    assert stops(state) and stops.reason == "timeout"


# -- real compiles --------------------------------------------------------------------------------------------------

def test_independent_sampling_proposes_three_per_iteration_and_the_budget_holds(tmp_path, simulator):
    # an iteration here costs up to 3 x (3 + 3) minibatch calls + 3 x 6 val calls = 36: after two iterations (72 calls)
    # the budget stops it; one proposal's cost (12) would start a third, which spends at least 18 and ends past 84
    out = tmp_path / "independent"
    summary = compile_in_process(config(out, {"max_metric_calls": 84, **THREE_PROPOSALS}), simulator)
    assert summary["iterations"] == 2 and proposals_per_iteration(out) == {1: 3, 2: 3}
    assert summary["proposals"] == 6 and summary["metric_calls"] <= 84
    assert summary["gepa_stop_reason"] == "max_metric_calls"
    assert summary["budgets"]["max_metric_calls"] == {"limit": 84, "spent": summary["metric_calls"], "over": 0}
    # all_improvements: several of an iteration's proposals improved on their minibatch and joined the pool
    assert max(candidates_per_iteration(out).values()) > 1, candidates_per_iteration(out)
    assert trials_row(out) == {"status": "completed", "error": None, "gepa_stop_reason": "max_metric_calls",
                               "iterations": 2, "proposals": 6}


def test_best_improvement_accepts_at_most_one_candidate_per_iteration(tmp_path, simulator):
    out = tmp_path / "best"
    summary = compile_in_process(
        config(out, {"max_metric_calls": 80, **THREE_PROPOSALS, "proposal_selection": "best_improvement"}), simulator)
    assert set(proposals_per_iteration(out).values()) == {3} and summary["iterations"] >= 2
    accepted = candidates_per_iteration(out)
    assert accepted and max(accepted.values()) == 1, accepted  # the same proposals under all_improvements: 3 in one
    assert summary["metric_calls"] <= 80


def test_a_timeout_of_zero_runs_no_iteration_and_records_why(tmp_path, simulator):
    out = tmp_path / "timeout"
    summary = compile_in_process(config(out, {"max_metric_calls": 80, "stop": {"timeout_seconds": 0}}), simulator)
    assert summary["iterations"] == 0 and summary["metric_calls"] == VAL  # the seed's validation pass only
    assert summary["gepa_stop_reason"] == "timeout" and summary["stop_reason"] is None
    assert trials_row(out)["status"] == "completed" and trials_row(out)["gepa_stop_reason"] == "timeout"
    assert json.loads((out / "summary.json").read_text())["gepa_stop_reason"] == "timeout"


def test_no_improvement_stops_before_the_budget_and_records_why(tmp_path, simulator):
    out = tmp_path / "patience"
    recorder = Recorder()
    summary = compile_in_process(
        config(out, {"max_metric_calls": 400, "stop": {"no_improvement_iterations": 2}}), recorder=recorder,
        simulator=simulator)
    best = [it["best_val"] for it in recorder.iterations()]
    assert summary["gepa_stop_reason"] == "no_improvement" and trials_row(out)["status"] == "completed"
    assert summary["metric_calls"] < 400 - 18  # the budget would have paid for another iteration
    assert len(best) >= 2 and best[-1] == best[-2] == max(best)  # two iterations without a better val score


# -- the trial's caps -----------------------------------------------------------------------------------------------

def tokens(usage: dict) -> int:
    return sum(role["total_tokens"] for role in usage.values())


def test_a_token_cap_lets_the_iteration_that_reaches_it_finish_and_starts_no_other(tmp_path, simulator):
    # first the same compile without a cap: what each iteration leaves spent
    free = Recorder()
    compile_in_process(config(tmp_path / "free", {"max_metric_calls": 80}), simulator, free)
    spent = [tokens(it["usage"]) for it in free.iterations()]
    assert len(spent) >= 3, spent
    cap = (spent[0] + spent[1]) // 2  # reached during the second iteration
    capped = Recorder()
    out = tmp_path / "capped"
    summary = compile_in_process(config(out, {"max_metric_calls": 80, "max_lm_tokens": cap}), simulator, capped)
    after = [tokens(it["usage"]) for it in capped.iterations()]
    assert summary["gepa_stop_reason"] == "max_lm_tokens" and summary["iterations"] == 2, (after, cap)
    assert after[0] < cap <= after[1]  # the second iteration crossed it, finished, and no third started
    assert summary["budgets"]["max_lm_tokens"] == {"limit": cap, "spent": after[1], "over": after[1] - cap}
    assert after[1] - cap <= after[1] - after[0]  # the overshoot: at most the last iteration's spend
    assert trials_row(out)["status"] == "completed" and trials_row(out)["gepa_stop_reason"] == "max_lm_tokens"


@pytest.mark.parametrize("cap, lm", [
    ({"max_wall_seconds": 0.001}, {}),
    ({"max_cost_usd": 0.001}, {"price_per_1k_prompt_tokens": 1.0, "price_per_1k_completion_tokens": 2.0}),
])
def test_wall_time_and_cost_caps_stop_the_trial_naming_the_cap(tmp_path, simulator, cap, lm):
    base = run_config(tmp_path / "out")
    cfg = config(tmp_path / "out", {"max_metric_calls": 80, **cap}, lm={**base["lm"], **lm})
    summary = compile_in_process(cfg, simulator)
    (name, limit), = cap.items()
    assert summary["gepa_stop_reason"] == name and summary["iterations"] == 0  # reached by the seed's evaluations
    used = summary["budgets"][name]
    assert used["limit"] == limit and used["spent"] >= limit and used["over"] == pytest.approx(used["spent"] - limit)
    if name == "max_cost_usd":
        assert used["spent"] == pytest.approx(sum(role["cost_usd"] for role in summary["lm_usage"].values()), rel=0.5)


def test_the_sweep_cost_budget_asks_the_run_config_whether_an_lm_has_a_price(tmp_path, monkeypatch):
    """One definition of "priced": sweep.budget.cost_usd is refused or accepted exactly as RunConfig.has_prices says."""
    from gepa_lab.compose import compose
    from gepa_lab.config.load import load_config
    from gepa_lab.sweep.config import SweepConfig

    raw = compose("sweep", ["sweep=demo", "sweep.budget.cost_usd=1", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="sweep.budget.cost_usd needs a price"):
        load_config(raw, SweepConfig)
    monkeypatch.setattr(RunConfig, "has_prices", lambda self: True)
    assert load_config(raw, SweepConfig).sweep.budget.cost_usd == 1
