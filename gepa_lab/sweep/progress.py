"""Live sweep progress in the terminal (a Ray Tune callback running in the driver)."""
from __future__ import annotations

import time

from ray.tune import Callback
from rich.console import Console
from rich.live import Live


class LiveProgress(Callback):
    def __init__(self, planned_trials: int, calls_per_trial: int | None, console: Console | None = None):
        self.planned = planned_trials
        self.calls_per_trial = calls_per_trial
        self.started = time.time()
        self.metric_calls: dict[str, int] = {}
        self.best: dict[str, float] = {}
        self.state: dict[str, str] = {}
        self.console = console
        self.live: Live | None = None

    def __getstate__(self):  # Tune pickles its callbacks with the experiment state; a terminal is not state
        return {k: v for k, v in self.__dict__.items() if k not in ("console", "live")}

    def setup(self, **info):
        self.console = getattr(self, "console", None) or Console(stderr=True)
        self.live = None  # a terminal gets a redrawn line; logs get one line per trial event instead
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.state[trial.trial_id] = "running"
        self._refresh(log=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "metric_calls" in result:
            self.metric_calls[trial.trial_id] = result["metric_calls"]
        if "best_val_score" in result:
            self.best[trial.trial_id] = result["best_val_score"]
        if "skipped" in result:
            self.state[trial.trial_id] = "skipped"
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.state.get(trial.trial_id) != "skipped":
            self.state[trial.trial_id] = "done"
        self._refresh(log=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.state[trial.trial_id] = "failed"
        self._refresh(log=True)

    def on_experiment_end(self, trials, **info):
        self._refresh()
        if self.live is not None:
            self.live.stop()

    def _refresh(self, log: bool = False):
        if self.live is not None:
            self.live.update(self._render())
        elif log:
            self.console.print(self._render(), soft_wrap=True)

    def _eta(self, spent: int) -> str:
        if not self.calls_per_trial or not spent:
            return "?"
        planned = self.planned * self.calls_per_trial
        remaining = max(planned - spent, 0) * (time.time() - self.started) / spent
        return f"{remaining:.0f}s"

    def _render(self) -> str:
        counts = {s: sum(1 for v in self.state.values() if v == s) for s in ("done", "running", "failed", "skipped")}
        spent = sum(self.metric_calls.values())
        best = max(self.best.values(), default=float("nan"))
        skipped = f", {counts['skipped']} skipped" if counts["skipped"] else ""
        return (f"trials {counts['done']}/{self.planned} done  {counts['running']} running  {counts['failed']} failed{skipped}"
                f"  best val {best:.3f}  metric calls {spent}  elapsed {time.time() - self.started:.0f}s  ETA {self._eta(spent)}")
