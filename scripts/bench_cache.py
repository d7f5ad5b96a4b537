#!/usr/bin/env python
"""Benchmark the sweep's shared rollout cache: N "trials" (separate processes, like Ray Tune's) each evaluate the
same seed program on the same valset, as every GEPA trial does first. Compared: each trial with its own
in-memory cache only (no sharing) vs all trials sharing one disk cache (or a Redis server).

    python scripts/bench_cache.py [--trials 4] [--examples 40] [--latency-ms 100] [--capacity 4] [--threads 4] [--backend disk|redis]

Prints server requests, wall time (with process start-up) and evaluation time (slowest trial) for both, and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(url: str, cache_opts: dict, examples: int, threads: int) -> dict:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import dspy

    from gepa_lab.lm.accounting import UsageMeter
    from gepa_lab.lm.cache import cache_stats, use_cache
    from gepa_lab.lm.config import LMConfig
    from gepa_lab.lm.endpoint import build_lm

    class Intent(dspy.Signature):
        """Classify the customer message."""

        text: str = dspy.InputField()
        label: str = dspy.OutputField(desc="card_lost, refund or balance")

    use_cache(None, **cache_opts)
    lm = build_lm(LMConfig(kind="sim", model="sim"), url, role="task")
    meter = UsageMeter({"task": lm})
    devset = [dspy.Example(text=f"customer message {i}: where is my money", label="refund").with_inputs("text")
              for i in range(examples)]
    started = time.perf_counter()
    with dspy.context(lm=lm, callbacks=[meter]):
        result = dspy.Evaluate(devset=devset, metric=lambda g, p, t=None: float(p.label == g.label),
                               num_threads=threads, display_progress=False)(dspy.Predict(Intent))
    return {"seconds": time.perf_counter() - started, "score": result.score, "usage": meter.snapshot()["task"],
            "cache": cache_stats()}


def run_trials(n: int, url: str, cache_opts: dict, examples: int, threads: int) -> tuple[float, list[dict]]:
    """n trial processes, started together (as a sweep with n concurrent trials would)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", url, json.dumps(cache_opts), str(examples), str(threads)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(err[-2000:])
        results.append(json.loads(out.strip().splitlines()[-1]))
    return time.perf_counter() - started, results


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--examples", type=int, default=40)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--capacity", type=int, default=4, help="requests the server processes at once (a busy GPU server)")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--backend", choices=["disk", "redis"], default="disk")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from gepa_lab.servers.redis import RedisServer
    from gepa_lab.servers.simulator import start_simulator

    with tempfile.TemporaryDirectory() as tmp, start_simulator(latency_ms=a.latency_ms, max_in_flight=a.capacity) as sim:
        rows = []
        redis_server = None
        try:
            if a.backend == "redis":
                redis_server = RedisServer(workdir=Path(tmp) / "redis")
                shared = {"mode": "redis", "redis_url": redis_server.url, "namespace": "bench"}
            else:
                shared = {"mode": "disk", "dir": str(Path(tmp) / "lm_cache")}
            for name, opts in (("per-trial memory cache", {"mode": "memory"}), (f"shared {a.backend} cache", shared)):
                before = sim.stats()["requests_served"]
                wall, results = run_trials(a.trials, sim.url, opts, a.examples, a.threads)
                served = sim.stats()["requests_served"] - before
                hits = sum(r["usage"]["cache_hits"] for r in results)
                scores = sorted({round(r["score"], 6) for r in results})
                evals = max(r["seconds"] for r in results)
                rows.append((name, served, hits, wall, evals, scores))
        finally:
            if redis_server is not None:
                redis_server.stop()
    print(f"{a.trials} trials x {a.examples} examples, simulator latency {a.latency_ms:g} ms, capacity {a.capacity}, "
          f"{a.threads} threads/trial")
    print(f"{'':26s} {'server requests':>16s} {'cache hits':>11s} {'wall s':>8s} {'eval s':>8s}  scores")
    for name, served, hits, wall, evals, scores in rows:
        print(f"{name:26s} {served:16d} {hits:11d} {wall:8.2f} {evals:8.2f}  {scores}")
    (_, s0, _, w0, e0, sc0), (_, s1, _, w1, e1, sc1) = rows
    print(f"requests ratio shared/unshared: {s1 / max(1, s0):.3f}   wall-time ratio: {w1 / w0:.3f} (process start-up included)   "
          f"eval-time ratio: {e1 / e0:.3f}   requests saved: {s0 - s1}   identical scores: {sc0 == sc1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
