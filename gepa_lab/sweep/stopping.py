"""Ending trials early without losing what they found: the sweep-level budget and ASHA's early stops.

One small Ray actor, the ledger, is shared by all trials: they record what they spent at every GEPA
iteration and ask it whether to stop. A trial that starts after the budget is spent exits at once;
running ones stop at their next iteration through a GEPA stop callback, then finish as usual (test
evaluation, W&B and MLflow runs closed, results written) with status `stopped`. ASHA's decisions go
through the same ledger instead of Tune killing the trial's actor mid-write.

The ledger writes what it holds to a file in the sweep's folder at every change, and a rerun of a killed sweep
starts from it: the budget covers the sweep before and after the crash, not each run of the driver."""
from __future__ import annotations

import json
import time
from pathlib import Path

import ray
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from gepa_lab import atomic
from gepa_lab.sweep.config import Budget

LEDGER_FILE = "ledger.json"


def ledger_name(sweep_id: str) -> str:
    return f"gepa_lab-ledger-{sweep_id}"


class Ledger:
    """What the sweep's trials spent, against its budget (SweepLedger: this class as the sweep's Ray actor).
    metric_calls: GEPA's count per trial, which goes on across a resume of the trial. lm_tokens and cost_usd: per trial
    and attempt (a run of the trial's function; a resumed one counts from zero again), summed. wall_seconds: the time
    the sweep's drivers ran, summed over reruns (up to each one's last recorded change). state_file: where it is kept,
    and restored from."""

    def __init__(self, budget: dict, state_file: str | None = None):
        self.budget = Budget.model_validate(budget)
        self.path = Path(state_file) if state_file else None
        saved = json.loads(self.path.read_text()) if self.path and self.path.exists() else {}
        self.metric_calls: dict[str, int] = saved.get("metric_calls", {})
        self.lm_tokens: dict[str, dict[str, int]] = saved.get("lm_tokens", {})
        self.cost_usd: dict[str, dict[str, float]] = saved.get("cost_usd", {})
        self.stop_requests: dict[str, str] = saved.get("stop_requests", {})
        self.started = time.time() - saved.get("wall_seconds", 0.0)

    def _save(self) -> None:
        if self.path is not None:
            atomic.write_json(self.path, {
                "budget": self.budget.model_dump(), "metric_calls": self.metric_calls, "lm_tokens": self.lm_tokens,
                "cost_usd": self.cost_usd, "stop_requests": self.stop_requests,
                "wall_seconds": time.time() - self.started,
            })

    def record(self, trial_id: str, attempt: str, metric_calls: int, tokens: int, cost_usd: float) -> None:
        self.metric_calls[trial_id] = metric_calls
        self.lm_tokens.setdefault(trial_id, {})[attempt] = tokens
        self.cost_usd.setdefault(trial_id, {})[attempt] = cost_usd
        self._save()

    def spent(self) -> dict:
        return {
            "metric_calls": sum(self.metric_calls.values()),
            "lm_tokens": sum(n for attempts in self.lm_tokens.values() for n in attempts.values()),
            "cost_usd": sum(c for attempts in self.cost_usd.values() for c in attempts.values()),
            "wall_seconds": time.time() - self.started,
        }

    def exhausted(self) -> str | None:
        spent, limits = self.spent(), self.budget.model_dump()
        for name, limit in limits.items():
            if limit is not None and spent[name] >= limit:
                self._save()  # the file's wall_seconds is as of its last save: now it reaches the limit too
                return f"sweep budget {name}={limit:g} spent ({spent[name]:.6g})"
        return None

    def request_stop(self, trial_id: str, reason: str) -> None:
        self.stop_requests.setdefault(trial_id, reason)
        self._save()

    def stop_reason(self, trial_id: str) -> str | None:
        return self.stop_requests.get(trial_id) or self.exhausted()


SweepLedger = ray.remote(num_cpus=0)(Ledger)


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
            ray.get_actor(ledger_name(self.sweep_id)).request_stop.remote(
                trial.trial_id, f"ASHA: below the cutoff of rung {self.rung(trial.trial_id, calls)} metric calls "
                                f"({result[self._metric]:.4g} {self._metric} at {calls})")
        return TrialScheduler.CONTINUE

    def rung(self, trial_id: str, calls: int) -> str:
        """The milestone (metric calls) at which ASHA just compared this trial: the highest one it reached, where its
        score was recorded."""
        bracket = self._trial_info[trial_id]
        return f"{max(m for m, recorded in bracket._rungs if trial_id in recorded and m <= calls):g}"
