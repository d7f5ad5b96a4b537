"""The sweep-level budget, shared by all trials through one small Ray actor.

Trials record what they spent at every GEPA iteration; a trial that starts after the budget is
spent exits at once, and running ones stop at their next iteration (a GEPA stop callback),
keeping what they found."""
from __future__ import annotations

import time

import ray

from gepa_lab.sweep.config import Budget


@ray.remote(num_cpus=0)
class BudgetLedger:
    def __init__(self, budget: dict):
        self.budget = Budget.model_validate(budget)
        self.started = time.time()
        self.metric_calls: dict[str, int] = {}
        self.tokens: dict[str, int] = {}

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


class BudgetStop:
    """A GEPA stop callback (gepa.utils.StopperProtocol): true once the sweep budget is spent."""

    def __init__(self, ledger):
        self.ledger = ledger

    def __call__(self, gepa_state) -> bool:
        return ray.get(self.ledger.exhausted.remote()) is not None
