"""The cases that run whole sweeps, each through the public command (`python -m gepa_lab.sweep sweep=demo ...`, as a
child process) so the benchmark measures what users run, and survives changes inside the sweep:

- saturation (item 1): R simulator replicas x K slots at L seconds per request, owned by the benchmark (so their
  /stats are read directly), behind the sweep's router (`lm=openai_compatible` with R URLs); a sweep of `trials`
  trials; the simulators' in-flight counts sampled every 0.1 s; the sweep's own lm_utilization from summary.json;
- the naive loop: the same configurations, a subset, one after another with plain dspy.GEPA and dspy.Evaluate at
  their default threads, plain dspy.LM, against the same replicas (through a router of our own, as the sweep's);
- the shared cache (item 4): the saturation sweep again with cache=disk; requests served and every trial's scores;
- overhead (item 3): sweeps of n trials with tiny budgets on an instant simulator, tracking on;
- the demo (item 6): `python -m gepa_lab.sweep sweep=demo`, its wall time and the peak summed RSS of its process tree.

The demo starts a local Ray head of its own, as a user's first sweep does; the other sweeps join one Ray head the
benchmark starts (as sweeps join a running cluster), so each measures the sweep, not Ray's start-up again.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from gepa_lab.paths import PROJECT_ROOT


class BenchError(RuntimeError):
    pass


class TreeMemory:
    """The summed RSS of a process and all its descendants (Ray's head and workers, simulators, router), sampled every
    interval_s in a thread; `peak_mb` is the highest sum seen."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.pid, self.interval_s, self.peak_mb = pid, interval_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-tree-memory")

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        self.peak_mb = max(self.peak_mb, total / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "TreeMemory":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


class InFlight:
    """Samples the requests in flight at the given simulators (their /stats) every interval_s: (time, total)."""

    def __init__(self, bases: list[str], interval_s: float = 0.1):
        self.bases, self.interval_s = bases, interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-in-flight")

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(self.interval_s):
                try:
                    total = sum(client.get(f"{b}/stats").json()["in_flight"] for b in self.bases)
                except httpx.HTTPError:
                    continue
                self.samples.append((time.time(), total))

    def __enter__(self) -> "InFlight":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self, start: float = 0.0, end: float = float("inf"), busy_only: bool = False) -> float | None:
        values = [n for t, n in self.samples if start <= t <= end and (n > 0 or not busy_only)]
        return sum(values) / len(values) if values else None

    def busy_seconds(self) -> float:
        """Sampled time with at least one request in flight."""
        return sum(self.interval_s for _, n in self.samples if n > 0)


def run_sweep(out: Path, overrides: list[str], timeout_s: float, ray_address: str = "") -> dict[str, Any]:
    """`python -m gepa_lab.sweep sweep=demo OVERRIDES output_dir=OUT`: its wall time, the peak memory of its process
    tree, its summary.json and trials (the results' trials table, and each trial's summary.json). ray_address: the
    running Ray cluster it joins (RAY_ADDRESS), as a sweep on a cluster does; "": a local Ray head of its own."""
    # MLflow in the sweep's own folder: the benchmark's winners stay out of the project's registry
    cmd = [sys.executable, "-m", "gepa_lab.sweep", "sweep=demo", *overrides, f"output_dir={out}",
           f"tracking.mlflow.tracking_uri=sqlite:///{out}/mlflow.db"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ray_address}
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=sink, stderr=subprocess.STDOUT, env=env)
        with TreeMemory(proc.pid) as memory:
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(60)
                raise BenchError(f"sweep {out.name} ran past {timeout_s:.0f}s; its log: {log}") from None
    ended = time.time()
    if code != 0 or not (out / "summary.json").exists():
        tail = log.read_text()[-3000:]
        raise BenchError(f"sweep {out.name} failed (exit {code}); its log: {log}\n{tail}")
    return {"wall_s": ended - started, "started": started, "ended": ended, "peak_rss_mb": memory.peak_mb,
            "summary": json.loads((out / "summary.json").read_text()), "trials": trial_rows(out), "log": str(log)}


def trial_rows(out: Path) -> list[dict[str, Any]]:
    from gepa_lab.results import query

    con = query.open_results(out)
    rows = query.sql(con, "SELECT trial_id, status, epoch(started_at) AS started, epoch(ended_at) AS ended, "
                          "best_val_score, best_test_score, seed_val_score, seed_test_score, metric_calls, wall_seconds, "
                          "config_json FROM trials ORDER BY started_at").dicts()
    con.close()
    for row in rows:
        config = json.loads(row.pop("config_json") or "{}")
        row["params"] = config.get("params") or {}
        summary = out / "trials" / row["trial_id"] / "summary.json"
        row["lm_usage"] = json.loads(summary.read_text())["lm_usage"] if summary.exists() else {}
    return rows


@dataclass
class SaturationPlan:
    replicas: int  # R
    slots: int  # K: requests each replica processes at once
    trials: int
    concurrent: int  # trials at once
    seeds: list[int]
    minibatches: list[int]
    naive_configs: int  # how many of the configurations the naive loop runs
    corpus: dict[str, int] = field(default_factory=lambda: {"train": 100, "val": 50, "test": 50})
    max_metric_calls: int = 250


def corpus_overrides(name: str, splits: dict[str, int]) -> list[str]:
    return [f"corpus.name={name}", *(f"corpus.splits.{k}={v}" for k, v in splits.items())]


def space_overrides(seeds: list[int], minibatches: list[int]) -> list[str]:
    """The grid seeds x minibatches; the base config takes the largest minibatch (the budget check reads the base)."""
    return [f"optimizer.reflection_minibatch_size={max(minibatches)}",
            f"sweep.space.optimizer.seed={{grid:[{','.join(map(str, seeds))}]}}",
            f"sweep.space.optimizer.reflection_minibatch_size={{grid:[{','.join(map(str, minibatches))}]}}"]


def budget(overrides: list[str], minibatches: list[int], wanted: int) -> int:
    """`wanted` metric calls, raised where needed to what the config's own check asks for the largest minibatch: the
    seed's validation pass plus the most one iteration can cost (a budget that pays for no iteration is refused)."""
    from gepa_lab.compose import compose
    from gepa_lab.sweep.config import SweepConfig

    cfg = SweepConfig.model_validate(compose("sweep", ["sweep=demo", *overrides, "output_dir=/tmp/gepa-lab-bench-unused",
                                                       f"optimizer.reflection_minibatch_size={max(minibatches)}",
                                                       "optimizer.max_metric_calls=1000000"]))
    val = cfg.corpus.splits.val
    return max(wanted, val + cfg.optimizer.iteration_cost(val))


def saturation_overrides(plan: SaturationPlan, urls: list[str], latency_s: float, cache: str) -> list[str]:
    corpus = corpus_overrides("bench_banking77", plan.corpus)
    return [
        *corpus, *space_overrides(plan.seeds, plan.minibatches),
        "lm=openai_compatible", "lm.model=sim", f"lm.api_base=[{','.join(urls)}]", f"lm.max_in_flight={plan.slots}",
        "lm.num_retries=3", f"reflection_lm.sim.latency_ms={latency_s * 1000:g}",
        f"optimizer.max_metric_calls={budget(corpus, plan.minibatches, plan.max_metric_calls)}",
        f"eval.test_limit={plan.corpus['test']}",
        f"sweep.max_concurrent={plan.concurrent}", f"cache={cache}", "tracking=none",
    ]


def _span(trials: list[dict[str, Any]]) -> float:
    done = [t for t in trials if t["started"] and t["ended"]]
    return max(t["ended"] for t in done) - min(t["started"] for t in done)


def _served(sims) -> int:
    return sum(s.stats()["requests_served"] for s in sims)


def _idle_breakdown(run: dict[str, Any], probe: InFlight, capacity: int, concurrent: int) -> dict[str, Any]:
    """Where the slot-seconds of the sweep's wall time went (fractions of capacity x wall)."""
    trials = [t for t in run["trials"] if t["started"] and t["ended"]]
    first, last = min(t["started"] for t in trials), max(t["ended"] for t in trials)
    last_start = max(t["started"] for t in trials)
    # stragglers: from the first end after the last start (fewer than `concurrent` trials left) to the last end
    tail_from = min((t["ended"] for t in trials if t["ended"] >= last_start), default=last)
    total = capacity * run["wall_s"]

    def busy(start: float, end: float) -> float:
        return sum(n * probe.interval_s for t, n in probe.samples if start <= t < end)

    def gaps(start: float, end: float) -> float:  # time inside [start, end) with nothing in flight
        return sum(probe.interval_s for t, n in probe.samples if start <= t < end and n == 0)

    startup, teardown = first - run["started"], run["ended"] - last
    reflection_s = sum((t["lm_usage"].get("reflection") or {}).get("latency_sum_s", 0.0) for t in trials)
    return {
        "busy": round(busy(run["started"], run["ended"]) / total, 4),
        "startup": round(capacity * startup / total, 4),  # Ray, servers, corpus, worker start before the first trial
        "teardown": round(capacity * teardown / total, 4),  # compaction, report, registration after the last trial
        "tail_stragglers": round((capacity * (last - tail_from) - busy(tail_from, last)) / total, 4),
        "nothing_in_flight": round(capacity * gaps(first, tail_from) / total, 4),  # every trial reflecting/writing/starting
        "partly_filled": round((capacity * (tail_from - first) - busy(first, tail_from)
                                - capacity * gaps(first, tail_from)) / total, 4),
        "startup_s": round(startup, 2), "teardown_s": round(teardown, 2), "tail_s": round(last - tail_from, 2),
        "reflection_wait_s_per_trial": round(reflection_s / max(1, len(trials)), 2),
    }


def saturation_and_cache(plan: SaturationPlan, latency_s: float, work: Path, timeout_s: float,
                         ray_address: str) -> dict[str, Any]:
    """The saturation sweep (cache off), the naive loop on the same replicas, and the same sweep with the cache on."""
    from gepa_lab.lm.config import RouterOptions
    from gepa_lab.servers.router import RouterConfig, RouterProcess
    from gepa_lab.servers.simulator import start_simulator

    work.mkdir(parents=True, exist_ok=True)
    capacity = plan.replicas * plan.slots
    out: dict[str, Any] = {"replicas": plan.replicas, "slots": plan.slots, "latency_s": latency_s, "capacity": capacity,
                           "trials": plan.trials, "concurrent": plan.concurrent}
    with ExitStack() as stack:
        sims = [stack.enter_context(start_simulator(max_in_flight=plan.slots, latency_ms=latency_s * 1000))
                for _ in range(plan.replicas)]
        urls = [s.url for s in sims]
        # 1. the sweep, cache off: every request reaches a server
        before = _served(sims)
        with InFlight([s.base for s in sims]) as probe:
            off = run_sweep(work / "saturation-cache-off", saturation_overrides(plan, urls, latency_s, "off"), timeout_s,
                            ray_address)
        served_off = _served(sims) - before
        counted = sum((t["lm_usage"].get("task") or {}).get("attempts", 0) for t in off["trials"])
        out["sweep"] = {
            "wall_s": round(off["wall_s"], 2), "requests_served": served_off, "requests_counted_by_trials": counted,
            "useful_rps": round(served_off / off["wall_s"], 2),
            "lm_utilization": off["summary"].get("lm_utilization"),
            "lm_utilization_eval": round(probe.mean(off["started"], off["ended"], busy_only=True) / capacity, 4),
            "lm_utilization_wall": round((probe.mean(off["started"], off["ended"]) or 0) / capacity, 4),
            "idle": _idle_breakdown(off, probe, capacity, plan.concurrent),
            # the same rate over the trials' span only (the first trial's start to the last one's end): what a longer
            # sweep, whose fixed start-up and teardown weigh less, approaches
            "useful_rps_trials_span": round(served_off / _span(off["trials"]), 2),
            "lm_load": off["summary"].get("lm_load"),
        }
        # 2. the naive loop: plain dspy.GEPA, one configuration after another, same replicas, a router of our own
        router = stack.enter_context(RouterProcess(RouterConfig(**RouterOptions().model_dump(), replicas=urls,
                                                                max_in_flight=plan.slots), supervise=False))
        reflection = stack.enter_context(start_simulator(max_in_flight=4, latency_ms=latency_s * 1000))
        configs = [(s, m) for s in plan.seeds for m in plan.minibatches][: plan.naive_configs]
        before = _served(sims)
        naive = naive_loop(configs, plan, router.url, router.token, reflection.url, work / "naive.log")
        served_naive = _served(sims) - before
        out["naive"] = {"configs": len(configs), "wall_s": round(naive["wall_s"], 2), "requests_served": served_naive,
                        "useful_rps": round(served_naive / naive["wall_s"], 2), "threads": naive["threads"]}
        # 3. the same sweep with the shared cache
        before = _served(sims)
        on = run_sweep(work / "saturation-cache-on", saturation_overrides(plan, urls, latency_s, "disk"), timeout_s,
                       ray_address)
        served_on = _served(sims) - before
    out["speedup_vs_naive"] = round(out["sweep"]["useful_rps"] / out["naive"]["useful_rps"], 2)

    def scores(run):
        return {json.dumps(t["params"], sort_keys=True): (t["best_val_score"], t["best_test_score"]) for t in run["trials"]}

    out["cache"] = {"requests_off": served_off, "requests_on": served_on,
                    "requests_saved_fraction": round(1 - served_on / served_off, 4),
                    "wall_s_off": round(off["wall_s"], 2), "wall_s_on": round(on["wall_s"], 2),
                    "identical_scores": scores(on) == scores(off), "lm_cache": on["summary"].get("lm_cache"),
                    "trials_completed": [off["summary"]["trials"]["completed"], on["summary"]["trials"]["completed"]]}
    return out


def naive_loop(configs: list[tuple[int, int]], plan: SaturationPlan, task_url: str, token: str, reflection_url: str,
               log: Path) -> dict[str, Any]:
    """What a user without the sweep would run: for each configuration, the seed program scored on test, plain
    dspy.GEPA (default threads), the winner scored on test, with plain dspy.LMs and dspy's cache off."""
    import dspy

    from gepa_lab.compose import compose
    from gepa_lab.config.schema import RunConfig
    from gepa_lab.tasks.task import resolve_metric
    from gepa_lab.trial import library_output_to, load_task

    overrides = ["task=banking77", *corpus_overrides("bench_banking77", plan.corpus), "output_dir=/tmp/gepa-lab-bench-naive"]
    cfg = RunConfig.model_validate(compose("run", overrides))
    task = load_task(cfg)
    metric = resolve_metric(cfg.task.metric)
    task_lm = dspy.LM("openai/sim", api_base=task_url, api_key=token, cache=False, temperature=0.0, max_tokens=1024)
    reflection_lm = dspy.LM("openai/sim", api_base=reflection_url, api_key="unused", cache=False, temperature=0.0,
                            max_tokens=1024)
    started = time.time()
    with open(log, "a") as sink, contextlib.redirect_stderr(sink), library_output_to(log), dspy.context(lm=task_lm):
        for seed, minibatch in configs:
            evaluate = dspy.Evaluate(devset=task.test, metric=metric, display_progress=False)
            evaluate(task.program)
            optimizer = dspy.GEPA(metric=metric, reflection_lm=reflection_lm, max_metric_calls=plan.max_metric_calls,
                                  reflection_minibatch_size=minibatch, seed=seed)
            winner = optimizer.compile(task.program, trainset=task.train, valset=task.val)
            evaluate(winner)
    return {"wall_s": time.time() - started, "threads": dspy.settings.num_threads}


OVERHEAD_CONCURRENT = 2  # trials at once in the overhead sweeps


def overhead(counts: tuple[int, ...], work: Path, timeout_s: float, ray_address: str,
             tracking: str = "local") -> dict[str, Any]:
    """Sweeps of n trials with tiny budgets on an instant simulator, OVERHEAD_CONCURRENT at a time: the slot time each trial
    takes, from the first trial's start to the last one's end, and the fixed time before and after. Each count once."""
    out: dict[str, Any] = {}
    for n in dict.fromkeys(counts):
        seeds, minibatches = list(range(max(1, n // 2))), [2, 3] if n > 1 else [2]
        corpus = corpus_overrides("bench_tiny", {"train": 20, "val": 10, "test": 10})
        overrides = [*corpus, *space_overrides(seeds, minibatches),
                     f"optimizer.max_metric_calls={budget(corpus, minibatches, 40)}",
                     "eval.test_limit=10", f"sweep.max_concurrent={OVERHEAD_CONCURRENT}", "cache=disk", f"tracking={tracking}"]
        run = run_sweep(work / f"overhead-{n}", overrides, timeout_s, ray_address)
        trials = [t for t in run["trials"] if t["started"] and t["ended"]]
        first, last = min(t["started"] for t in trials), max(t["ended"] for t in trials)
        calls = sum(sum(u.get("requests", 0) for u in t["lm_usage"].values()) for t in trials) / len(trials)
        out[str(n)] = {"trials": len(trials), "wall_s": round(run["wall_s"], 2),
                       "per_trial_s": round((last - first) * min(OVERHEAD_CONCURRENT, len(trials)) / len(trials), 3),
                       "inside_trial_s": round(sum(t["wall_seconds"] or 0 for t in trials) / len(trials), 3),
                       "fixed_s": round(run["wall_s"] - (last - first), 2), "lm_calls_per_trial": round(calls, 1),
                       "completed": run["summary"]["trials"]["completed"]}
    return out


def demo(overrides: list[str], work: Path, timeout_s: float) -> dict[str, Any]:
    run = run_sweep(work / "demo", overrides, timeout_s)
    return {"wall_s": round(run["wall_s"], 2), "peak_rss_mb": round(run["peak_rss_mb"], 1),
            "trials_completed": run["summary"]["trials"]["completed"], "best_test_score": run["summary"].get("best_test_score"),
            "overrides": overrides}
