"""One Ray Tune trial = one GEPA compile through gepa_lab.harness, plus Tune's own sink and the ledger's stop."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from gepa_lab.config.schema import RunConfig
from gepa_lab.events import Event
from gepa_lab.harness import harnessed_trial
from gepa_lab.lm.config import LMConfig
from gepa_lab.results.writer import write_table
from gepa_lab.servers.serving import Endpoint
from gepa_lab.sweep import space
from gepa_lab.sweep.stopping import LedgerStop


@dataclass
class SweepContext:
    """What every trial of a sweep shares (pickled once by tune.with_parameters)."""

    sweep_id: str
    output_dir: str
    base_config: dict[str, Any]
    endpoints: dict[str, Endpoint]  # LMConfig.server_key() -> live endpoint (with the router's token), started once by the driver
    eval_threads: dict[str, int]  # task LM's server_key() -> evaluation threads per trial (gepa_lab.sweep.lm_load)
    ledger: Any = None  # SweepLedger actor handle, when the sweep has a budget or ASHA
    mlflow_parent_run_id: str | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # kwargs for gepa_lab.lm.cache.use_cache


class TuneReporter:
    """Sink: per-iteration metrics to Tune (and the budget ledger)."""

    def __init__(self, ledger=None):
        self.ledger = ledger

    def handle(self, event: Event) -> None:
        d = event.data
        if event.kind == "iteration":
            tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in d["usage"].values())
            if self.ledger is not None:
                self.ledger.record.remote(event.trial_id, d["metric_calls"], tokens)
            tune.report(
                {
                    "iteration": d["iteration"],
                    "best_val_score": d["best_val"],
                    "metric_calls": d["metric_calls"],
                    "lm_requests": sum(r["requests"] for r in d["usage"].values()),
                    "lm_tokens": tokens,
                }
            )


def trial_config(ctx: SweepContext, params: dict[str, Any], trial_id: str) -> RunConfig:
    data = space.apply(ctx.base_config, params)
    data["output_dir"] = str(Path(ctx.output_dir) / "trials" / trial_id)
    if data["eval"]["num_threads"] is None:
        data["eval"]["num_threads"] = ctx.eval_threads[LMConfig.model_validate(data["lm"]).server_key()]
    return RunConfig.model_validate(data)


def gepa_trial(params: dict[str, Any], ctx: SweepContext) -> None:
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(ctx, params, trial_id)
    if ctx.ledger is not None and (reason := ray.get(ctx.ledger.exhausted.remote())):
        write_table(Path(ctx.output_dir) / "results" / "trials" / f"{trial_id}.parquet", "trials",
                    [{"sweep_id": ctx.sweep_id, "trial_id": trial_id, "status": "skipped", "error": reason}])
        # Optuna and ASHA need the sweep's metric and time axis in every result: NaN = no score
        tune.report({"skipped": reason, "best_val_score": float("nan"), "metric_calls": 0})
        return
    summary = harnessed_trial(
        cfg, root=Path(ctx.output_dir), trial_id=trial_id, sweep_id=ctx.sweep_id, params=params,
        sinks=[TuneReporter(ctx.ledger)],
        endpoints={"task": ctx.endpoints[cfg.lm.server_key()], "reflection": ctx.endpoints[cfg.reflection_lm.server_key()]},
        cache=ctx.cache, mlflow_parent_run_id=ctx.mlflow_parent_run_id,
        stop_callbacks=[LedgerStop(ctx.ledger, trial_id)] if ctx.ledger is not None else None,
    )
    # The final report comes last: Tune may end this actor as soon as the trial's function returns after it.
    keys = ("seed_val_score", "seed_test_score", "best_val_score", "best_test_score", "metric_calls", "lm_calls")
    tune.report({k: summary[k] for k in keys})
