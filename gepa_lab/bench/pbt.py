"""PBT against independent trials at an equal budget (issue 19, docs/sweeps.md "Population-based search").

For each sweep seed s: the same population (trial seeds s·P … s·P+P-1, the same base config and per-trial
max_metric_calls) run twice through `python -m gepa_lab.sweep`: once as independent trials (scheduler fifo), once
with sweep.scheduler=pbt (sweep.searcher_seed=s). Each sweep's winner is picked on val and judged on test; the
difference PBT − independent is paired by seed, and its interval is Student's t over the seeds. Both sweeps count
the metric calls their trials executed (a PBT segment never counts its donor's spend), so the budgets are compared
too. On the LM simulator: what it says about GEPA on a real LM is only what the simulator's model of one says."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gepa_lab.bench.sweeps import budget, corpus_overrides, run_sweep
from gepa_lab.results.stats import paired_t_interval


@dataclass
class PbtPlan:
    seeds: list[int]
    population: int
    max_metric_calls: int
    interval_metric_calls: int
    minibatches: list[int]  # PBT's mutation of reflection_minibatch_size; the population starts at the middle one
    corpus: dict[str, int]


def population_overrides(plan: PbtPlan, seed: int) -> list[str]:
    corpus = corpus_overrides("bench_banking77", plan.corpus)
    start = sorted(plan.minibatches)[len(plan.minibatches) // 2]
    trial_seeds = ",".join(str(seed * plan.population + i) for i in range(plan.population))
    return [*corpus, f"optimizer.reflection_minibatch_size={start}",
            f"optimizer.max_metric_calls={budget(corpus, [max(plan.minibatches)], plan.max_metric_calls)}",
            f"sweep.space.optimizer.seed={{grid:[{trial_seeds}]}}",
            "~sweep.space.optimizer.reflection_minibatch_size",
            f"eval.test_limit={plan.corpus['test']}", f"sweep.max_concurrent={plan.population}",
            f"sweep.searcher_seed={seed}", "cache=off", "tracking=none"]


def pbt_overrides(plan: PbtPlan) -> list[str]:
    return ["sweep.scheduler=pbt", f"sweep.pbt.interval_metric_calls={plan.interval_metric_calls}",
            "sweep.pbt.quantile_fraction=0.5",
            f"++sweep.pbt.mutations={{optimizer.reflection_minibatch_size:[{','.join(map(str, plan.minibatches))}]}}"]


def outcome(run: dict[str, Any], out: Path) -> dict[str, Any]:
    [winner] = run["summary"]["winners"].values()
    return {"best_test_score": winner["best_test_score"], "best_val_score": winner["best_val_score"],
            "executed_metric_calls": sum(t["metric_calls"] or 0 for t in run["trials"]),
            "trials_completed": run["summary"]["trials"]["completed"], "wall_s": round(run["wall_s"], 1),
            # a PBT trial's segments after its first each began with an exploit (docs/sweeps.md)
            "exploits": sum(1 for p in out.glob("trials/*/segments/*/segment.json") if p.parent.name != "000")}


def pbt_vs_independent(plan: PbtPlan, work: Path, timeout_s: float, ray_address: str,
                       at_once: bool = False) -> dict[str, Any]:
    """at_once: every seed's pair of sweeps runs at once (a smoke test's figures: the sweeps share the cores)."""
    def pair(seed: int) -> dict[str, Any]:
        common = population_overrides(plan, seed)
        fifo, pbt = work / f"pbt-{seed}-independent", work / f"pbt-{seed}-pbt"
        independent = outcome(run_sweep(fifo, common, timeout_s, ray_address), fifo)
        population = outcome(run_sweep(pbt, [*common, *pbt_overrides(plan)], timeout_s, ray_address), pbt)
        return {"seed": seed, "independent": independent, "pbt": population}

    with ThreadPoolExecutor(len(plan.seeds) if at_once else 1) as pool:
        pairs = list(pool.map(pair, plan.seeds))
    indep = [p["independent"]["best_test_score"] for p in pairs]
    popbt = [p["pbt"]["best_test_score"] for p in pairs]
    mean, low, high = paired_t_interval(indep, popbt)
    calls = sum(p["pbt"]["executed_metric_calls"] for p in pairs) / sum(p["independent"]["executed_metric_calls"] for p in pairs)
    return {"plan": plan.__dict__, "pairs": pairs, "gain_mean": mean, "gain_ci95": [low, high],
            "wins": sum(b > a for a, b in zip(indep, popbt)), "ties": sum(b == a for a, b in zip(indep, popbt)),
            "budget_ratio": round(calls, 4), "exploits": sum(p["pbt"]["exploits"] for p in pairs)}
