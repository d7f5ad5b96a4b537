"""python -m gepa_lab.bench [--quick] [--out DIR]: every case of the benchmark in one run (docs/benchmarks.md).

The full run writes bench.json at the project root and docs/benchmarks.md; --quick (a smoke test: each case at its
smallest size) writes both into outputs/bench-quick/. Either prints the table. --out DIR writes both into DIR."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from gepa_lab.bench.pbt import PbtPlan
from gepa_lab.paths import OUTPUTS_DIR, PROJECT_ROOT

# the rate assumed for one GPU replica (vLLM) answering short classification requests: the "hundreds of short
# requests per second" issue 16 states; not measured here (no GPU)
GPU_REPLICA_RPS = 300.0
CPU_SHARE = 0.25  # the saturation latency L is chosen so the sweep's requests at full rate cost this share of the cores


@dataclass
class Plan:
    client_calls: int
    router_seconds: float
    router_replicas: tuple[int, ...]
    replicas: int  # R
    slots: int  # K
    seeds: list[int]
    minibatches: list[int]
    concurrent: int
    naive_configs: int
    corpus: dict[str, int]
    max_metric_calls: int
    overhead_counts: tuple[int, int, int]
    overhead_tracking: str
    results_rows: tuple[int, int, int]
    demo_overrides: list[str]
    llama_predictions: int
    llama_overrides: tuple[str, ...]  # the run's (task and lm) for the llama.cpp case
    pbt: PbtPlan
    sweep_timeout_s: float = 1800
    # the cases that need nothing from each other run at once, the sweeps of each too: a smoke test's figures only
    at_once: bool = False
    notes: list[str] = field(default_factory=list)


FULL = Plan(client_calls=300, router_seconds=3.0, router_replicas=(1, 2, 4), replicas=4, slots=16,
            seeds=list(range(8)), minibatches=[5, 10], concurrent=8, naive_configs=2,
            corpus={"train": 100, "val": 50, "test": 50}, max_metric_calls=200, overhead_counts=(4, 16, 64),
            overhead_tracking="local",
            results_rows=(10_000, 100_000, 1_000_000), demo_overrides=[], llama_predictions=2,
            llama_overrides=("task=banking77",),
            pbt=PbtPlan(seeds=list(range(5)), population=4, max_metric_calls=600, interval_metric_calls=120,
                        minibatches=[20, 30, 40], corpus={"train": 200, "val": 60, "test": 200}))
QUICK = Plan(client_calls=40, router_seconds=0.5, router_replicas=(1, 2, 4), replicas=2, slots=4, seeds=[0],
             minibatches=[5, 10], concurrent=2, naive_configs=1, corpus={"train": 40, "val": 20, "test": 20},
             max_metric_calls=100, overhead_counts=(1, 1, 1), overhead_tracking="none",
             results_rows=(1_000, 10_000, 100_000),
             demo_overrides=["sweep.space.optimizer.seed={grid:[0]}", "sweep.space.optimizer.reflection_minibatch_size={grid:[30]}",
                             "optimizer.max_metric_calls=400",
                             "eval.test_limit=100"],
             llama_predictions=1, llama_overrides=("task=classify", "lm.max_tokens=64"), sweep_timeout_s=600, at_once=True,
             pbt=PbtPlan(seeds=[0, 1], population=2, max_metric_calls=120, interval_metric_calls=40, minibatches=[4, 6],
                         corpus={"train": 40, "val": 20, "test": 20}),
             notes=["--quick: every case at its smallest size; the overhead keys all hold one sweep of 1 trial (tracking "
                    "off), the results keys 10³, 10⁴ and 10⁵ rows; the cases ran at once, sharing the cores. A smoke "
                    "test, not a benchmark."])


def saturation_latency(plan: Plan, client: dict[str, Any], router: dict[str, Any]) -> tuple[float, str]:
    """L long enough that R·K requests every L seconds cost at most CPU_SHARE of this machine's cores in the
    client, router and simulator (each one's CPU per request as measured), so the servers are the bottleneck."""
    cpu_ms = client["client_cpu_ms_per_call"] + router["router_cpu_ms_per_request"] + router["simulator_cpu_ms_per_request"]
    cores = os.cpu_count() or 1
    needed = plan.replicas * plan.slots * cpu_ms / 1000 / (CPU_SHARE * cores)
    latency = min(2.0, max(0.25, math.ceil(needed * 20) / 20))
    why = (f"{plan.replicas}·{plan.slots} requests per L cost {cpu_ms:.2f} ms of CPU each (client {client['client_cpu_ms_per_call']:.2f}, "
           f"router {router['router_cpu_ms_per_request']:.2f}, simulator {router['simulator_cpu_ms_per_request']:.2f}); "
           f"L ≥ {needed:.3f} s keeps that under {CPU_SHARE:.0%} of {cores} cores (floor 0.25 s, ceiling 2 s)")
    return latency, why


def git_state() -> dict[str, Any]:
    from gepa_lab.config.identity import git_state as state

    return state()


def machine() -> dict[str, Any]:
    import platform

    import psutil

    return {"cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


def flat(cases: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The figures (gepa_lab.bench.figures) from the cases' details."""
    client, router, sat = cases["client"], cases["router"], cases["saturation"]
    points = router["points"]
    over, results, demo, llama = cases["overhead"], cases["results"], cases["demo"], cases["llamacpp"]
    a, b, c = (str(n) for n in plan.overhead_counts)
    r1, r2, r3 = (f"{n:.0e}".replace("+0", "") for n in plan.results_rows)
    return {
        "lm_utilization_eval": sat["sweep"]["lm_utilization_eval"],
        "lm_utilization_sweep": sat["sweep"]["lm_utilization"],
        "lm_utilization_wall": sat["sweep"]["lm_utilization_wall"],
        "sweep_useful_rps": sat["sweep"]["useful_rps"],
        "naive_useful_rps": sat["naive"]["useful_rps"],
        "speedup_vs_naive": sat["speedup_vs_naive"],
        "client_cpu_ms_per_call": client["client_cpu_ms_per_call"],
        "client_calls_per_s_per_core": client["client_calls_per_s_per_core"],
        "dspy_cpu_ms_per_call": client["dspy_cpu_ms"],
        "httpx_cpu_ms_per_call": client["httpx_cpu_ms"],
        "router_max_rps": router["router_max_rps"],
        **{f"router_rps_{n}": p["router_rps"] for n, p in points.items()},
        "router_rps_workers_2": router["workers"][2]["router_rps"],
        **{f"direct_rps_{n}": p["direct_rps"] for n, p in points.items()},
        "router_cpu_ms_per_request": router["router_cpu_ms_per_request"],
        "router_cpu_ceiling_rps": router["router_cpu_ceiling_rps"],
        "simulator_rps": router["simulator_rps"],
        "trial_cpus_per_gpu_replica": round(GPU_REPLICA_RPS * client["client_cpu_ms_per_call"] / 1000, 2),
        "routers_per_gpu_replica": round(GPU_REPLICA_RPS / router["router_cpu_ceiling_rps"], 3),
        "overhead_s_per_trial_4": over[a]["per_trial_s"],
        "overhead_s_per_trial_16": over[b]["per_trial_s"],
        "overhead_s_per_trial_64": over[c]["per_trial_s"],
        "overhead_fixed_s_64": over[c]["fixed_s"],
        "cache_requests_saved_fraction": sat["cache"]["requests_saved_fraction"],
        "cache_identical_scores": sat["cache"]["identical_scores"],
        "results_query_s_1e4": results[r1]["slowest_query_s"],
        "results_query_s_1e5": results[r2]["slowest_query_s"],
        "results_query_s_1e6": results[r3]["slowest_query_s"],
        "demo_wall_s": demo["wall_s"],
        "demo_peak_rss_mb": demo["peak_rss_mb"],
        "llamacpp_s_per_prediction_before": llama["s_per_prediction_before"],
        "llamacpp_s_per_prediction_after": llama["s_per_prediction_after"],
        "llamacpp_lm_calls_per_prediction_before": llama["lm_calls_per_prediction_before"],
        "llamacpp_lm_calls_per_prediction_after": llama["lm_calls_per_prediction_after"],
        "pbt_test_gain": cases["pbt"]["gain_mean"],
        "pbt_test_gain_ci_low": cases["pbt"]["gain_ci95"][0],
        "pbt_test_gain_ci_high": cases["pbt"]["gain_ci95"][1],
        "pbt_budget_ratio": cases["pbt"]["budget_ratio"],
    }


def in_lanes(lanes: list[list[Callable[[], None]]], at_once: bool) -> None:
    """Each lane's steps in turn; the lanes one after another, or (at_once) each in a thread of its own."""
    if not at_once:
        for lane in lanes:
            for step in lane:
                step()
        return
    with ThreadPoolExecutor(len(lanes)) as pool:
        for done in [pool.submit(lambda lane=lane: [step() for step in lane]) for lane in lanes]:
            done.result()


def run(plan: Plan, work: Path, say) -> dict[str, Any]:
    from gepa_lab.bench import hops, llamacpp, pbt, results_scale, sweeps
    from gepa_lab.servers.ray_cluster import local_head

    cases: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    def case(name: str, fn, *args, **kwargs):
        say(f"[bench] {name} ...")
        started = time.perf_counter()
        cases[name] = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - started, 1)
        say(f"[bench] {name}: {seconds[name]} s")

    sat = sweeps.SaturationPlan(replicas=plan.replicas, slots=plan.slots, trials=len(plan.seeds) * len(plan.minibatches),
                                concurrent=plan.concurrent, seeds=plan.seeds, minibatches=plan.minibatches,
                                naive_configs=plan.naive_configs, corpus=plan.corpus, max_metric_calls=plan.max_metric_calls)

    def saturation(ray_address: str) -> None:  # its latency follows from the client's and router's CPU per request
        latency, why = saturation_latency(plan, cases["client"], cases["router"])
        case("saturation", sweeps.saturation_and_cache, sat, latency, work, plan.sweep_timeout_s, ray_address)
        cases["saturation"]["latency_choice"] = why

    hops_first = [lambda: case("client", hops.client_cpu, plan.client_calls),
                  lambda: case("router", hops.router_rates, plan.router_replicas, plan.router_seconds)]
    # the demo starts a Ray head of its own, as a user's first sweep does
    own_head = [lambda: case("results", results_scale.results_at_scale, plan.results_rows),
                lambda: case("demo", sweeps.demo, plan.demo_overrides, work, plan.sweep_timeout_s),
                lambda: case("llamacpp", llamacpp.llamacpp_adapters, plan.llama_predictions, plan.llama_overrides)]
    if not plan.at_once:  # the hops' ceilings on a machine with nothing else running
        in_lanes([hops_first], at_once=False)
    # one Ray head for the sweeps below (gepa_lab.bench.sweeps), a CPU for each trial any of them runs at once
    pbt_trials = plan.pbt.population * (len(plan.pbt.seeds) if plan.at_once else 1)
    trials = (plan.concurrent, pbt_trials, sweeps.OVERHEAD_CONCURRENT)
    with local_head(work / "ray-head.log", num_cpus=sum(trials) if plan.at_once else max(trials)) as ray_address:
        on_the_head = [
            [*(hops_first if plan.at_once else []), lambda: saturation(ray_address)],
            [lambda: case("overhead", sweeps.overhead, plan.overhead_counts, work, plan.sweep_timeout_s, ray_address,
                          plan.overhead_tracking)],
            [lambda: case("pbt", pbt.pbt_vs_independent, plan.pbt, work, plan.sweep_timeout_s, ray_address, plan.at_once)],
        ]
        in_lanes([*on_the_head, own_head] if plan.at_once else on_the_head, plan.at_once)
    if not plan.at_once:
        in_lanes([own_head], at_once=False)
    cases["seconds"] = seconds
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gepa_lab.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every case at its smallest size (a smoke test)")
    parser.add_argument("--out", type=Path, help="write bench.json and benchmarks.md here (default: the project root "
                                                 "and docs/ for a full run, outputs/bench-quick/ with --quick)")
    args = parser.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from gepa_lab.bench.report import page, table

    plan = QUICK if args.quick else FULL
    if args.out:
        json_path, page_path = args.out / "bench.json", args.out / "benchmarks.md"
    elif args.quick:
        json_path, page_path = OUTPUTS_DIR / "bench-quick" / "bench.json", OUTPUTS_DIR / "bench-quick" / "benchmarks.md"
    else:
        json_path, page_path = PROJECT_ROOT / "bench.json", PROJECT_ROOT / "docs" / "benchmarks.md"
    stamp = datetime.now(timezone.utc)
    work = OUTPUTS_DIR / f"bench-{'quick-' if args.quick else ''}{stamp:%Y%m%d-%H%M%S}"
    meta = {"date": stamp.isoformat(timespec="seconds"), "quick": args.quick, "machine": machine(), **git_state(),
            "plan": asdict(plan), "gpu_replica_rps_assumed": GPU_REPLICA_RPS, "work_dir": str(work)}
    started = time.perf_counter()
    # stderr as it is now: the naive loop redirects sys.stderr into its log while other cases may still be saying
    cases = run(plan, work, lambda line, stderr=sys.stderr: print(line, file=stderr, flush=True))
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    report = {**flat(cases, plan), "meta": meta, "cases": cases}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_text(page(report))
    if args.quick:
        shutil.rmtree(work, ignore_errors=True)
    print(table(report))
    print(f"\nbench.json: {json_path}\npage: {page_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
