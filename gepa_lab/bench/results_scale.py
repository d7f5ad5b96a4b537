"""Results at scale (issue 16, item 5): a sweep's results with N evaluation rows, written by the real ResultsWriter
(the events a trial emits, one Parquet part per trial and GEPA iteration) and compacted as the sweep driver does,
then the leaderboard, the seed-vs-winner per-example join (the named query `changed`, every trial) and the
effect-of-knob query (`effects`) timed on a fresh connection."""
from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from gepa_lab.events import Event
from gepa_lab.results import query
from gepa_lab.results.compact import compact
from gepa_lab.results.writer import ResultsWriter

VAL, TEST, CANDIDATES = 150, 500, 30  # banking77-sized; rows per trial: CANDIDATES x VAL + 2 x TEST (seed and winner on test)
ROWS_PER_TRIAL = CANDIDATES * VAL + 2 * TEST
LABELS = [f"intent_{i}" for i in range(77)]


def _trial_events(trial_id: str, index: int, rng: random.Random, t0: float) -> list[Event]:
    seed, minibatch = index % 4, (30, 40)[index // 4 % 2]
    config = {"task": {"name": "bench"}, "optimizer": {"seed": seed, "reflection_minibatch_size": minibatch},
              "params": {"optimizer.seed": seed, "optimizer.reflection_minibatch_size": minibatch}}
    events = [Event("trial_started", trial_id, {"config": config, "config_hash": "bench", "manifest_hash": "bench",
                                                "git_commit": "bench"}, t0)]

    def scored(n: int, split: str, quality: float) -> dict[str, Any]:
        ids = [f"{split}-{i}" for i in range(n)]
        gold = {i: LABELS[hash(i) % len(LABELS)] for i in ids}
        answer = {i: gold[i] if rng.random() < quality else rng.choice(LABELS) for i in ids}
        return {"scores": {i: float(answer[i] == gold[i]) for i in ids},
                "predictions": {i: json.dumps({"intent": answer[i]}) for i in ids},
                "feedback": {i: (f'Correct. The correct answer is "{gold[i]}".' if answer[i] == gold[i] else
                                 f'Incorrect: you answered "{answer[i]}". The correct answer is "{gold[i]}".') for i in ids}}

    best = 0
    for c in range(CANDIDATES):
        quality = 0.3 + 0.2 * rng.random()
        events.append(Event("candidate", trial_id, {"iteration": c, "candidate_idx": c, "parents": [max(0, c - 1)] if c else [],
                                                    "instructions": {"predict": f"instruction {c} of {trial_id}"},
                                                    "val_score": quality, "metric_calls": (c + 1) * VAL}, t0))
        events.append(Event("evaluation", trial_id, {"split": "val", "candidate_idx": c, **scored(VAL, "val", quality)}, t0))
        events.append(Event("iteration", trial_id, {}, t0))
        best = c if quality > 0.45 else best
    events.append(Event("evaluation", trial_id, {"split": "test", "candidate_idx": 0, **scored(TEST, "test", 0.35)}, t0))
    events.append(Event("evaluation", trial_id, {"split": "test", "candidate_idx": best, **scored(TEST, "test", 0.45)}, t0))
    summary = {"lm_usage": {"task": {"requests": 1}, "reflection": {"requests": 1}}, "seed_val_score": 0.3,
               "seed_test_score": 0.35, "best_val_score": 0.3 + 0.01 * (index % 17), "best_test_score": 0.45,
               "best_candidate_idx": best, "num_candidates": CANDIDATES, "metric_calls": CANDIDATES * VAL, "lm_calls": 1,
               "wall_seconds": 1.0, "program_path": "program.json"}
    events.append(Event("trial_finished", trial_id, {"summary": summary}, t0 + 60))
    return events


def write_sweep(root: Path, rows: int, seed: int = 0) -> dict[str, Any]:
    """A sweep's results folder under root with about `rows` evaluation rows; the seconds writing and compacting took."""
    rng = random.Random(seed)
    trials = max(1, round(rows / ROWS_PER_TRIAL))
    started = time.perf_counter()
    for index in range(trials):
        trial_id = f"trial_{index:05d}"
        writer = ResultsWriter(root / "results", sweep_id="bench", trial_config=None)
        for event in _trial_events(trial_id, index, rng, 1.7e9 + index):
            writer.handle(event)
    written = time.perf_counter()
    compact(root / "results")
    return {"trials": trials, "write_s": round(written - started, 3), "compact_s": round(time.perf_counter() - written, 3)}


def time_queries(folder: Path) -> dict[str, Any]:
    timings: dict[str, Any] = {}
    started = time.perf_counter()
    con = query.open_results(folder)
    timings["open_s"] = time.perf_counter() - started
    for name, run in (("leaderboard", lambda: query.leaderboard(con)),
                      ("seed_vs_winner", lambda: query.sql(con, "changed")),
                      ("effects", lambda: query.effects(con))):
        started = time.perf_counter()
        result = run()
        timings[f"{name}_s"] = time.perf_counter() - started
        timings[f"{name}_rows"] = len(result)
    timings["rows"] = con.execute("SELECT count(*) FROM evaluations").fetchall()[0][0]
    con.close()
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in timings.items()}


def results_at_scale(sizes: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rows in sizes:
        with tempfile.TemporaryDirectory(prefix="gepa-lab-bench-results-") as tmp:
            made = write_sweep(Path(tmp), rows)
            timed = time_queries(Path(tmp))
        out[f"{rows:.0e}".replace("+0", "")] = {**made, **timed,
                                                "slowest_query_s": max(timed[k] for k in ("leaderboard_s", "seed_vs_winner_s", "effects_s"))}
    return out
