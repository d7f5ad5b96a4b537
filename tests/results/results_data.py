"""Real Parquet results written by the real ResultsWriter from synthetic trial events (helpers for tests/results)."""
from __future__ import annotations

import copy
from pathlib import Path

from gepa_lab.events import EventStream
from gepa_lab.results.stats import bootstrap_ci, paired_bootstrap_ci
from gepa_lab.results.writer import ResultsWriter

BASE_CONFIG = {
    "output_dir": "/x",
    "task": {"name": "banking77"},
    "optimizer": {"seed": 0, "reflection_minibatch_size": 3, "max_metric_calls": 100},
    "lm": {"model": "sim/task", "temperature": 0.0},
    "tracking": {"wandb": {"enabled": False}},
}


def write_trial(
    output_dir: Path,
    trial_id: str,
    vals: list[float],
    calls: list[int],
    test: tuple[float, float] = (0.3, 0.35),
    params: dict | None = None,
    sweep_id: str = "s1",
    fail: bool = False,
    test_examples: tuple[list[float], list[float]] | None = None,
    segment: int = 0,
) -> None:
    """One trial: the seed + candidates with val scores `vals` at metric calls `calls`, then finished
    (best = max val, earliest), or failed after the candidates. test_examples: the seed's and the winner's
    per-example test scores (then `test` is their means); the summary's 95% intervals come from them. segment: a PBT
    segment of the trial (its candidates' instructions say which)."""
    seed_scores, best_scores = test_examples or ([0.0, 1.0, 0.0], [1.0, 1.0, 0.0])
    if test_examples:
        test = (sum(seed_scores) / len(seed_scores), sum(best_scores) / len(best_scores))
    config = copy.deepcopy(BASE_CONFIG)
    config["output_dir"] = str(output_dir / "trials" / trial_id)
    for path, value in (params or {}).items():
        node = config
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    writer = ResultsWriter(output_dir / "results", sweep_id=sweep_id, trial_config=config, segment=segment)
    events = EventStream(trial_id, [writer])
    events.emit("trial_started", config=config, config_hash="h" + trial_id, manifest_hash="m", git_commit="abc")
    events.emit("evaluation", split="test", candidate_idx=0, scores=dict(enumerate(seed_scores)))
    for idx, (val, n) in enumerate(zip(vals, calls)):
        instruction = f"instruction {idx} of {trial_id}" + (f" in segment {segment}" if segment else "")
        events.emit("candidate", iteration=idx, candidate_idx=idx, parents=[] if idx == 0 else [0],
                    instructions={"predict": instruction}, val_score=val, metric_calls=n)
        events.emit("evaluation", split="val", candidate_idx=idx, scores={0: val, 1: 1.0})
        events.emit("iteration", iteration=idx, accepted=True, best_val=max(vals[: idx + 1]), metric_calls=n,
                    seconds=1.0, usage={})
        # GEPA saves its state before its next iteration (and after the last): the rows it holds are written then
        events.emit("state_saved", run_dir=config["output_dir"] + "/gepa", best_val=max(vals[: idx + 1]), metric_calls=n)
    if fail:
        events.emit("trial_failed", error="RuntimeError: boom", saved_candidates=len(vals), lm_usage={})
        return
    best_idx = vals.index(max(vals))
    if best_idx:
        events.emit("evaluation", split="test", candidate_idx=best_idx, scores=dict(enumerate(best_scores)))
    usage = {"requests": 10, "cache_hits": 1, "errors": 0, "retries": 0, "prompt_tokens": 100, "completion_tokens": 20,
             "latency_p50_s": 0.01, "latency_p95_s": 0.02, "cost_usd": 0.0}
    events.emit("trial_finished", summary={
        "seed_val_score": vals[0], "seed_test_score": test[0], "best_val_score": max(vals), "best_test_score": test[1],
        "best_candidate_idx": best_idx, "num_candidates": len(vals), "metric_calls": calls[-1], "lm_calls": 20,
        "wall_seconds": 2.5, "program_path": str(output_dir / "trials" / trial_id / "program.json"),
        "lm_usage": {"task": usage, "reflection": usage},
        # from the per-example scores, as run_trial makes them
        "seed_test_ci95": list(bootstrap_ci(seed_scores)), "best_test_ci95": list(bootstrap_ci(best_scores)),
        "test_gain_ci95": list(paired_bootstrap_ci(seed_scores, best_scores)),
    })
