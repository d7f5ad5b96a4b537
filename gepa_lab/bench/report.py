"""bench.json -> the Markdown table (printed) and docs/benchmarks.md (the table, each case's details, the figures'
definitions)."""
from __future__ import annotations

from typing import Any

from gepa_lab.bench.figures import FIGURES


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(headers: list[str], rows: list[list[Any]], align: str = "---:") -> list[str]:
    return [_row(headers), _row([align] * len(headers)), *(_row(r) for r in rows)]


def table(report: dict[str, Any]) -> str:
    rows = []
    for f in FIGURES:
        value, met = report.get(f.key), f.met(report.get(f.key))
        rows.append([f"{f.label} (`{f.key}`)", f.shown(value), f.unit, f.target_text,
                     "" if met is None else "yes" if met else "**no**"])
    return "\n".join(_table(["figure", "value", "unit", "target", "met"], rows, "---"))


def _details(report: dict[str, Any]) -> list[str]:
    cases, meta = report["cases"], report["meta"]
    sat, router, client = cases["saturation"], cases["router"], cases["client"]
    sweep, naive, cache, idle = sat["sweep"], sat["naive"], sat["cache"], sat["sweep"]["idle"]
    out = [
        "## Saturation and the naive loop", "",
        f"{sat['replicas']} simulator replicas × {sat['slots']} slots at L = {sat['latency_s']:g} s per request "
        f"(capacity {sat['capacity']} requests at once, {sat['capacity'] / sat['latency_s']:.0f} requests/s), owned by the "
        f"benchmark, behind the sweep's router (`lm=openai_compatible` with their {sat['replicas']} URLs, "
        f"`lm.max_in_flight={sat['slots']}`); the reflection LM is the sweep's own simulator at the same latency. "
        f"{sat['trials']} trials, {sat['concurrent']} at a time, cache off, tracking off. How L was chosen: "
        f"{sat['latency_choice']}.", "",
        f"- sweep: {sweep['requests_served']} requests served in {sweep['wall_s']} s = {sweep['useful_rps']} useful "
        f"requests/s ({sweep['useful_rps_trials_span']} over the trials' span alone; the trials' own accounting counted "
        f"{sweep['requests_counted_by_trials']}); evaluation threads per "
        f"trial {((sweep.get('lm_load') or {}).get('eval_threads'))}, the router's peak queue "
        f"{((sweep.get('lm_load') or {}).get('peak_waiting'))};",
        f"- naive loop: {naive['configs']} of the configurations one after another, dspy's default "
        f"{naive['threads']} threads: {naive['requests_served']} requests in {naive['wall_s']} s = "
        f"{naive['useful_rps']} requests/s; at most {naive['threads']} requests in flight, so at most "
        f"{naive['threads'] / sat['latency_s']:.0f} requests/s whatever the servers could take.", "",
        "Where the sweep's slot-seconds went (fractions of capacity × the sweep command's wall time):", "",
        *_table(["busy", "start-up", "teardown", "nothing in flight", "partly filled", "stragglers at the end"],
                [[idle["busy"], f"{idle['startup']} ({idle['startup_s']} s)", f"{idle['teardown']} ({idle['teardown_s']} s)",
                  idle["nothing_in_flight"], idle["partly_filled"], f"{idle['tail_stragglers']} ({idle['tail_s']} s)"]]), "",
        "Start-up: before the first trial starts (joining the benchmark's running Ray head, as a sweep on a cluster "
        "does, the router, the corpus, each trial worker's start and imports); "
        "teardown: after the last trial ends (compaction, the report; no registration with tracking off); nothing in "
        "flight: every running trial reflecting, starting, or writing results (each trial waited "
        f"{idle['reflection_wait_s_per_trial']} s on its reflection LM in all); partly filled: some slots idle while "
        "others worked (the tail of each evaluation batch, GEPA's minibatches smaller than a trial's threads); "
        "stragglers: after the last trial started, as the trials still running finish one by one.", "",
        "## The shared cache", "",
        f"The saturation sweep again with `cache=disk`: {cache['requests_on']} requests served instead of "
        f"{cache['requests_off']} (saved {cache['requests_saved_fraction']:.1%}; the sweep's `lm_cache`: "
        f"{cache['lm_cache']}); wall time {cache['wall_s_on']} s instead of {cache['wall_s_off']} s; trials completed "
        f"{cache['trials_completed']}; identical scores: {cache['identical_scores']}.", "",
        "## Ceilings of each hop", "",
        f"Client, one thread, {client['calls']} banking77 predictions against an instant simulator: a trial's call costs "
        f"{client['trial_cpu_ms']} ms of CPU (dspy + gepa_lab's engine, accounting, cache lookup), "
        f"{client['dspy_cpu_ms']} ms without accounting and cache, a bare httpx client {client['httpx_cpu_ms']} ms: "
        f"{client['client_calls_per_s_per_core']} vs {client['httpx_calls_per_s_per_core']} calls/s per core. The "
        f"trial's accounting saw {client['trial_server_requests']} requests reach the server, which served "
        f"{client['trial_simulator_served']}.", "",
        *_table(["replicas", "direct req/s", "through the router req/s", "router CPU ms/request",
                 "simulator CPU ms/request", "requests sent", "simulators served", "errors"],
                [[n, p["direct_rps"], p["router_rps"], p["router_cpu_ms_per_request"], p["sim_cpu_ms_per_request"],
                  p["requests_sent"], p["simulator_served"], p["errors"]] for n, p in router["points"].items()]), "",
        *_table(["router workers", "replicas", "through the router req/s", "router CPU ms/request (all workers)",
                 "requests sent", "simulators served", "errors"],
                [[w, p["replicas"], p["router_rps"], p["router_cpu_ms_per_request"], p["requests_sent"],
                  p["simulator_served"], p["errors"]] for w, p in router["workers"].items()]), "",
        f"Load: {router['concurrency']} connections from one asyncio process on the same machine, "
        f"{router['seconds_per_point']} s per point: on {meta['machine']['cores']} cores the load generator, the router "
        f"and the simulators share the CPU, so router_cpu_ceiling_rps ({report['router_cpu_ceiling_rps']}) is what one "
        "router process could forward with a core to itself.", "",
        f"At an assumed {meta['gpu_replica_rps_assumed']:.0f} short requests/s per GPU replica (issue 16's \"hundreds of "
        f"short requests per second\"; not measured here), one replica needs {report['trial_cpus_per_gpu_replica']} "
        f"cores of trial client CPU and {report['routers_per_gpu_replica']} of a router process.", "",
        "## Overhead as the sweep grows", "",
        *_table(["trials", "wall s", "slot-seconds per trial", "inside run_trial s", "fixed s", "LM calls per trial"],
                [[n, o["wall_s"], o["per_trial_s"], o["inside_trial_s"], o["fixed_s"], o["lm_calls_per_trial"]]
                 for n, o in cases["overhead"].items()]), "",
        "## Results at scale", "",
        *_table(["evaluation rows", "trials", "write s", "compact s", "open s", "leaderboard s", "seed vs winner s",
                 "effects s"],
                [[r["rows"], r["trials"], r["write_s"], r["compact_s"], r["open_s"], r["leaderboard_s"],
                  r["seed_vs_winner_s"], r["effects_s"]] for r in cases["results"].values()]), "",
        "## The demo and the real CPU LM", "",
        f"The demo ({cases['demo']['overrides'] or 'as `make demo` runs it'}): {cases['demo']['wall_s']} s, peak "
        f"{cases['demo']['peak_rss_mb']} MiB over its process tree, {cases['demo']['trials_completed']} trials completed.", "",
        f"llama.cpp ({cases['llamacpp']['model']}, {' '.join(cases['llamacpp']['overrides'])}, "
        f"{cases['llamacpp']['predictions']} predictions each): ChatAdapter {cases['llamacpp']['s_per_prediction_before']} s "
        f"and {cases['llamacpp']['lm_calls_per_prediction_before']} calls per prediction "
        f"({cases['llamacpp']['completion_tokens_per_prediction_before']} completion tokens); `adapter: json` "
        f"{cases['llamacpp']['s_per_prediction_after']} s and {cases['llamacpp']['lm_calls_per_prediction_after']} calls "
        f"({cases['llamacpp']['completion_tokens_per_prediction_after']} tokens): {cases['llamacpp']['speedup']}× faster.", "",
        *_pbt(cases["pbt"], cases["llamacpp"]["s_per_prediction_after"]),
    ]
    return out


def _pbt(pbt: dict[str, Any], llama_s_per_prediction: float) -> list[str]:
    plan = pbt["plan"]
    calls = sum(p["independent"]["executed_metric_calls"] + p["pbt"]["executed_metric_calls"] for p in pbt["pairs"])
    low, high = pbt["gain_ci95"]
    interval = "no interval from one seed" if low is None else f"95 % t interval [{low:+.3f}, {high:+.3f}]"
    return [
        "## Population-based search against independent trials", "",
        f"On the LM simulator (docs/simulator.md), banking77 ({', '.join(f'{k} {v}' for k, v in plan['corpus'].items())} "
        f"examples): for each of {len(plan['seeds'])} sweep "
        f"seeds, a population of {plan['population']} trials (the same trial seeds, reflection minibatch "
        f"{sorted(plan['minibatches'])[len(plan['minibatches']) // 2]}, {plan['max_metric_calls']} metric calls each) run as "
        f"independent trials and as `sweep.scheduler=pbt` (every {plan['interval_metric_calls']} calls a trial in the bottom "
        f"half continues from a top trial's GEPA state, minibatch mutated among {plan['minibatches']}). Each sweep's winner "
        "is picked on val and scored on test; the pairs are by seed.", "",
        *_table(["seed", "independent: test", "PBT: test", "PBT − independent", "independent: calls", "PBT: calls",
                 "exploits"],
                [[p["seed"], p["independent"]["best_test_score"], p["pbt"]["best_test_score"],
                  f"{p['pbt']['best_test_score'] - p['independent']['best_test_score']:+.3f}",
                  p["independent"]["executed_metric_calls"], p["pbt"]["executed_metric_calls"], p["pbt"]["exploits"]]
                 for p in pbt["pairs"]]), "",
        f"PBT − independent on test: mean {pbt['gain_mean']:+.3f}, {interval}; PBT better on {pbt['wins']} of "
        f"{len(pbt['pairs'])} seeds, tied on {pbt['ties']}; metric calls executed PBT ÷ independent "
        f"{pbt['budget_ratio']}. Not run on a real LM: the one at hand here is llama.cpp, whose "
        f"{llama_s_per_prediction} s per prediction (above) would take these {calls:,} metric calls alone "
        f"{calls * llama_s_per_prediction / 3600:.0f} hours on this machine, before any reflection or test scoring.", "",
    ]


# What is known about a missed target (from profiling it); printed under "Targets missed" when it is missed
WHY_MISSED = {
    "router_max_rps": (
        "py-spy on the router under this load (2026-12-01): about 90 % of its CPU goes to aiohttp's HTTP handling on both "
        "sides (parsing, writing headers and bodies, the socket writes themselves) and about 9 % to gepa_lab's own "
        "routing (slot accounting, picking a replica, the affinity key); no small change in our code moves it. "
        "router_cpu_ceiling_rps is what one process forwards with a core to itself; past it, `router.workers` runs "
        "several router processes on one address (the slots split between them: the router workers table). Here the "
        "load generator, the router and the Python simulators share 2 cores, so a second worker finds no free core: "
        "the machine, not the router, sets this figure. At the assumed GPU replica rate one router process carries "
        "about 1 ÷ routers_per_gpu_replica replicas"),
    "speedup_vs_naive": (
        "the sweep's rate is taken over its whole wall time, start-up and teardown included (see where the slot-seconds "
        "went, and the rate over the trials' span alone); the naive loop keeps at most its 8 threads' requests in "
        "flight, so its rate is bounded by 8 ÷ L, and the sweep's by R·K ÷ L: the ratio grows with R·K and with the "
        "length of the sweep, and shrinks on a machine whose start-up is slow"),
    "lm_utilization_eval": "see where the slot-seconds went: partly filled slots are evaluation batches' tails",
    "lm_utilization_sweep": "see where the slot-seconds went (inside the trials' windows: nothing in flight, partly filled)",
    "results_query_s_1e6": "see the results table: the slowest query at 10⁶ rows",
}


def _missed(report: dict[str, Any]) -> list[str]:
    missed = [f for f in FIGURES if f.met(report.get(f.key)) is False]
    if not missed:
        return ["Every target was met.", ""]
    return [*(f"- `{f.key}` = {f.shown(report.get(f.key))} (target {f.target_text}): {WHY_MISSED.get(f.key, 'not analysed')}."
              for f in missed), ""]


def page(report: dict[str, Any]) -> str:
    meta = report["meta"]
    m = meta["machine"]
    dirty = " (with uncommitted changes)" if meta.get("git_dirty") else ""
    lines = [
        "# Benchmarks", "",
        "Written by `python -m gepa_lab.bench` (every case in one run, one after another; `--quick` runs each at its "
        "smallest size, all at once, as a smoke test into outputs/bench-quick/, and `make test` runs it; how long each "
        "took is below). "
        "The figures are also in `bench.json` at the project root, one key each, with every case's details under "
        "`cases`. Measure on an idle machine: the figures are rates and CPU times of processes sharing its cores. "
        "The demo starts a local Ray head of its own, as a first sweep does; the other sweeps join one Ray head the "
        "benchmark starts, as sweeps on a cluster join a running one.", "",
        f"Run {meta['date']} on {m['cores']} cores, {m['memory_gib']} GiB ({m['cpu']}, Python {m['python']}; load average "
        f"at the start {m['load_avg_at_start']}), commit `{meta.get('git_commit')}`{dirty}, {meta['wall_s']} s in all "
        f"(per case, seconds: {', '.join(f'{k} {v:g}' for k, v in report['cases']['seconds'].items())}).", "",
        *[f"> {note}" for note in meta["plan"].get("notes") or []], "",
        table(report), "",
        "## Targets missed", "",
        *_missed(report),
        *_details(report),
        "## Narrower benchmarks", "",
        "`python scripts/bench_sim.py` measures the simulator's answer path (its system-prompt parse cache) on banking77 "
        "prompts; `python scripts/bench_cache.py [--backend redis]` the shared rollout cache across trial processes, also "
        "on Redis.", "",
        "## What each figure is", "",
        *[f"- `{f.key}`{f' ({f.unit})' if f.unit else ''}: {f.definition}." for f in FIGURES], "",
    ]
    return "\n".join(lines)
