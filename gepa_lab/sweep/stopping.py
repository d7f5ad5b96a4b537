"""Ending trials early without losing what they found: the sweep-level budget and ASHA's early stops.

One small Ray actor, the ledger, is shared by all trials: they record what they spent at every GEPA
iteration and ask it whether to stop. A trial that starts after the budget is spent exits at once;
running ones stop at their next iteration through a GEPA stop callback, then finish as usual (test
evaluation, W&B and MLflow runs closed, results written) with status `stopped`. ASHA's decisions go
through the same ledger instead of Tune killing the trial's actor mid-write."""
from __future__ import annotations

import time

import ray
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from gepa_lab.sweep.config import Budget


def ledger_name(sweep_id: str) -> str:
    return f"gepa_lab-ledger-{sweep_id}"


@ray.remote(num_cpus=0)
class SweepLedger:
    def __init__(self, budget: dict):
        self.budget = Budget.model_validate(budget)
        self.started = time.time()
        self.metric_calls: dict[str, int] = {}
        self.tokens: dict[str, int] = {}
        self.stop_requests: dict[str, str] = {}

    def record(self, trial_id: str, metric_calls: int, tokens: int) -> None:
        self.metric_calls[trial_id] = metric_calls
        self.tokens[trial_id] = tokens

    def spent(self) -> dict:
        return {
            "metric_calls": sum(self.metric_calls.values()),
            "lm_tokens": sum(self.tokens.values()),
            "wall_seconds": time.time() - self.started,
        }

    def exhausted(self) -> str | None:
        spent, limits = self.spent(), self.budget.model_dump()
        for name, limit in limits.items():
            if limit is not None and spent[name] >= limit:
                return f"sweep budget {name}={limit} spent ({spent[name]:.0f})"
        return None

    def request_stop(self, trial_id: str, reason: str) -> None:
        self.stop_requests.setdefault(trial_id, reason)

    def stop_reason(self, trial_id: str) -> str | None:
        return self.stop_requests.get(trial_id) or self.exhausted()


class LedgerStop:
    """A GEPA stop callback (gepa.utils.StopperProtocol): true once the ledger says this trial must stop.
    `reason` tells run_trial why, so the trial's results say `stopped` rather than `completed`."""

    def __init__(self, ledger, trial_id: str):
        self.ledger = ledger
        self.trial_id = trial_id
        self.reason: str | None = None

    def __call__(self, gepa_state) -> bool:
        self.reason = ray.get(self.ledger.stop_reason.remote(self.trial_id))
        return self.reason is not None


class GracefulASHA(ASHAScheduler):
    """ASHA whose STOP is a request through the ledger: the trial ends at its next GEPA iteration and keeps
    its results and tracking runs. The ledger is found by name, because Tune pickles the scheduler with
    the experiment for resume, and an actor handle would not survive a restart."""

    def __init__(self, sweep_id: str, **kwargs):
        super().__init__(**kwargs)
        self.sweep_id = sweep_id

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision != TrialScheduler.STOP:
            return decision
        calls = result.get(self._time_attr, 0)
        if calls < self._max_t:  # at max_t the trial's own budget ends it anyway, as completed
            ray.get_actor(ledger_name(self.sweep_id)).request_stop.remote(trial.trial_id, f"ASHA at {calls} metric calls")
        return TrialScheduler.CONTINUE
