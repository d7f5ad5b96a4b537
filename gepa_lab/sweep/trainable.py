"""One Ray Tune trial = one GEPA compile through gepa_lab.harness, plus Tune's own sink and the ledger's stop.

Tune may run a trial's function more than once: it retries a trial whose worker died (sweep.max_failures), and a
rerun of a killed sweep restarts the trials Tune last saw unfinished (it saves its state only now and then). So the
function first reads the trial's own row in the results: a trial that finished reports what it recorded and runs
nothing, one that failed in this run of the sweep fails again at once (retries are for lost workers), and any other
resumes from its GEPA state."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
from ray import tune

from gepa_lab.config.schema import RunConfig
from gepa_lab.errors import GepaLabError
from gepa_lab.events import Event
from gepa_lab.harness import harnessed_trial
from gepa_lab.lm.config import LMConfig
from gepa_lab.results.writer import write_table
from gepa_lab.servers.ray_cluster import NodeChecks
from gepa_lab.servers.serving import Endpoint
from gepa_lab.sweep import space
from gepa_lab.sweep.groups import GROUPS_AXIS
from gepa_lab.sweep.stopping import LedgerStop


@dataclass
class SweepContext:
    """What every trial of a sweep shares (pickled once by tune.with_parameters)."""

    sweep_id: str
    output_dir: str
    base_config: dict[str, Any]
    endpoints: dict[str, Endpoint]  # LMConfig.server_key() -> live endpoint (with the router's token), started once by the driver
    eval_threads: dict[str, int]  # task LM's server_key() -> evaluation threads per trial (gepa_lab.sweep.lm_load)
    node_checks: NodeChecks  # what a trial checks on its node first: it may have joined after the sweep's checks
    ledger: Any = None  # SweepLedger actor handle, when the sweep has a budget or ASHA
    mlflow_parent_run_id: str | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # kwargs for gepa_lab.lm.cache.use_cache
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # group combination label -> its config (groups.py)
    tied: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # space.tied_axes of sweep.tied
    started_at: float = field(default_factory=time.time)  # when this run of the sweep's driver began


class TuneReporter:
    """Sink: per-iteration metrics to Tune (and the budget ledger). attempt: this run of the trial's function (its LM
    usage counts from zero; GEPA's metric calls go on from its saved state)."""

    def __init__(self, ledger=None, attempt: str = ""):
        self.ledger = ledger
        self.attempt = attempt

    def handle(self, event: Event) -> None:
        d = event.data
        if event.kind == "iteration":
            tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in d["usage"].values())
            if self.ledger is not None:
                cost = sum(r.get("cost_usd") or 0.0 for r in d["usage"].values())
                self.ledger.record.remote(event.trial_id, self.attempt, d["metric_calls"], tokens, cost)
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
    base = ctx.variants[params[GROUPS_AXIS]] if GROUPS_AXIS in params else ctx.base_config
    data = space.apply(base, space.expand(params, ctx.tied))
    data["output_dir"] = str(Path(ctx.output_dir) / "trials" / trial_id)
    if data["eval"]["num_threads"] is None:
        data["eval"]["num_threads"] = ctx.eval_threads[LMConfig.model_validate(data["lm"]).server_key()]
    return RunConfig.model_validate(data)


FINAL_REPORT = ("seed_val_score", "seed_test_score", "best_val_score", "best_test_score", "metric_calls", "lm_calls")


def recorded_row(ctx: SweepContext, trial_id: str) -> dict[str, Any] | None:
    path = Path(ctx.output_dir) / "results" / "trials" / f"{trial_id}.parquet"
    return pq.read_table(path).to_pylist()[0] if path.exists() else None


def report_recorded(ctx: SweepContext, trial_id: str) -> bool:
    """Report the trial's own recorded outcome to Tune instead of running it again, where it has one (see the module's
    docstring); False: run (or resume) it."""
    row = recorded_row(ctx, trial_id)
    status = row and row["status"]
    if status in ("completed", "stopped"):
        tune.report({k: row[k] for k in FINAL_REPORT})
        return True
    if status == "skipped":
        tune.report({"skipped": row["error"], "best_val_score": float("nan"), "metric_calls": 0})
        return True
    if status == "failed" and row["ended_at"] is not None and row["ended_at"].timestamp() >= ctx.started_at:
        raise GepaLabError(f"{row['error']} (failed in this run of the sweep: not retried)")
    return False


def gepa_trial(params: dict[str, Any], ctx: SweepContext) -> None:
    trial_id = tune.get_context().get_trial_id()
    ctx.node_checks.check_here()
    if report_recorded(ctx, trial_id):
        return
    cfg = trial_config(ctx, params, trial_id)
    if ctx.ledger is not None and (reason := ray.get(ctx.ledger.exhausted.remote())):
        write_table(Path(ctx.output_dir) / "results" / "trials" / f"{trial_id}.parquet", "trials",
                    [{"sweep_id": ctx.sweep_id, "trial_id": trial_id, "status": "skipped", "error": reason}])
        # Optuna and ASHA need the sweep's metric and time axis in every result: NaN = no score
        tune.report({"skipped": reason, "best_val_score": float("nan"), "metric_calls": 0})
        return
    summary = harnessed_trial(
        # recorded: the labels of tied axes and the group combination, and the keys a tied label set
        cfg, root=Path(ctx.output_dir), trial_id=trial_id, sweep_id=ctx.sweep_id,
        params={**params, **space.expand(params, ctx.tied)},
        sinks=[TuneReporter(ctx.ledger, attempt=uuid.uuid4().hex[:8])],
        endpoints={"task": ctx.endpoints[cfg.lm.server_key()], "reflection": ctx.endpoints[cfg.reflection_lm.server_key()]},
        cache=ctx.cache, mlflow_parent_run_id=ctx.mlflow_parent_run_id,
        stop_callbacks=[LedgerStop(ctx.ledger, trial_id)] if ctx.ledger is not None else None,
    )
    # The final report comes last: Tune may end this actor as soon as the trial's function returns after it.
    tune.report({k: summary[k] for k in FINAL_REPORT})
