"""`python -m gepa_lab.results diff DIR_A DIR_B` on results the real ResultsWriter wrote: trials matched by their
parameters (not their ids, nor the order they ran in), "identical" and exit 0, or the first trial, candidate and
example that differ and exit 1; a folder without results is one line, exit 2."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from gepa_lab.events import EventStream
from gepa_lab.results.diff import diff
from gepa_lab.results.writer import ResultsWriter
from tests.conftest import run_cli

EXAMPLES = ["e1", "e2", "e3"]


def trial_spec(seed: int) -> dict:
    """A trial's outcome: three candidates with per-example val scores and predictions, then the winner on test."""
    return {
        "params": {"optimizer.seed": seed, "optimizer.reflection_minibatch_size": 4},
        "candidates": [{"instruction": f"instruction {i} (seed {seed})",
                        "val": {e: float((i + j + seed) % 2) for j, e in enumerate(EXAMPLES)},
                        "predictions": {e: f'{{"label": "{e}-{i}"}}' for e in EXAMPLES}} for i in range(3)],
        "test": {e: 1.0 for e in EXAMPLES},
        "metric_calls": 60,
    }


def best_candidate(spec: dict) -> int:
    vals = [sum(c["val"].values()) for c in spec["candidates"]]
    return vals.index(max(vals))


def write_sweep(folder: Path, specs: list[dict], sweep_id: str, id_prefix: str) -> None:
    """Each spec as a trial of one sweep, written through the real ResultsWriter, in the order given."""
    for n, spec in enumerate(specs):
        trial_id = f"{id_prefix}_{n:05d}"
        config = {"params": spec["params"], "task": {"name": "banking77"}, "output_dir": str(folder / trial_id)}
        events = EventStream(trial_id, [ResultsWriter(folder / "results", sweep_id=sweep_id, trial_config=config)])
        events.emit("trial_started", config=config, config_hash="h", manifest_hash="m", git_commit="abc")
        vals = []
        for i, cand in enumerate(spec["candidates"]):
            vals.append(sum(cand["val"].values()) / len(cand["val"]))
            events.emit("candidate", iteration=i, candidate_idx=i, parents=[] if i == 0 else [i - 1],
                        instructions={"predict": cand["instruction"]}, val_score=vals[-1], metric_calls=20 * (i + 1))
            events.emit("evaluation", split="val", candidate_idx=i, scores=cand["val"], predictions=cand["predictions"],
                        feedback={e: "right" if s else "wrong" for e, s in cand["val"].items()})
            events.emit("iteration", iteration=i, accepted=True, best_val=max(vals), metric_calls=20 * (i + 1),
                        seconds=1.0, usage={})
        best = best_candidate(spec)
        for idx in dict.fromkeys((0, best)):
            events.emit("evaluation", split="test", candidate_idx=idx, scores=spec["test"])
        events.emit("trial_finished", summary={
            "seed_val_score": vals[0], "seed_test_score": 1.0, "best_val_score": max(vals), "best_test_score": 1.0,
            "best_candidate_idx": best, "num_candidates": len(vals), "metric_calls": spec["metric_calls"],
            "lm_calls": 10 + n, "wall_seconds": 1.0 + n,  # how long it took is no outcome: it may differ
            "program_path": str(folder / trial_id / "program.json"), "lm_usage": {}})


@pytest.fixture
def specs() -> list[dict]:
    return [trial_spec(seed) for seed in (0, 1, 2)]


def pair(tmp_path: Path, specs_a: list[dict], specs_b: list[dict]) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    write_sweep(a, specs_a, "sweep-a", "aaaa")
    write_sweep(b, specs_b, "sweep-b", "bbbb")  # other ids, and (below) another order
    return a, b


def test_the_same_trials_in_another_order_under_other_ids_are_identical(tmp_path, specs):
    a, b = pair(tmp_path, specs, list(reversed(specs)))
    result = diff(a, b)
    tests = sum(len({0, best_candidate(spec)}) for spec in specs)  # the seed's and the winner's, on 3 examples
    assert result.identical and (result.trials, result.candidates, result.evaluations) == (3, 9, 9 * 3 + 3 * tests)
    cli = run_cli("gepa_lab.results", "diff", str(a), str(b))
    assert cli.returncode == 0 and cli.stdout.startswith("identical: 3 trials matched by their parameters"), cli.stdout


def test_the_first_trial_candidate_and_example_that_differ_are_named(tmp_path, specs):
    changed = copy.deepcopy(specs)
    changed[2]["candidates"][0]["val"]["e1"] = 0.5  # a later trial (seed 2), an earlier candidate: reported second
    changed[1]["candidates"][2]["val"]["e3"] = 1 - changed[1]["candidates"][2]["val"]["e3"]
    changed[1]["candidates"][2]["val"]["e2"] = 1 - changed[1]["candidates"][2]["val"]["e2"]  # e2 comes before e3
    a, b = pair(tmp_path, specs, changed)
    cli = run_cli("gepa_lab.results", "diff", str(a), str(b))
    assert cli.returncode == 1, cli.stdout + cli.stderr
    first = cli.stdout.splitlines()[0]
    assert first.startswith("different: trial optimizer.reflection_minibatch_size=4, optimizer.seed=1 "
                            "(A: aaaa_00001, B: bbbb_00001): candidate 2, val example e2: score"), first


def test_a_prediction_that_differs_under_the_same_score_is_shown(tmp_path, specs):
    changed = copy.deepcopy(specs)
    changed[0]["candidates"][1]["predictions"]["e3"] = '{"label": "other"}'
    result = diff(*pair(tmp_path, specs, changed))
    assert "candidate 1, val example e3: same score" in result.first and "prediction" in result.first
    assert result.details == ['A prediction: {"label": "e3-1"}', 'B prediction: {"label": "other"}']


def test_an_instruction_or_a_budget_that_differs_is_named(tmp_path, specs):
    instruction, budget = copy.deepcopy(specs), copy.deepcopy(specs)
    instruction[0]["candidates"][1]["instruction"] = "something else"
    budget[0]["metric_calls"] = 64
    assert "candidate 1: instructions_json" in diff(*pair(tmp_path / "i", specs, instruction)).first
    assert "metric_calls 60 in A, 64 in B" in diff(*pair(tmp_path / "m", specs, budget)).first


def test_a_trial_without_counterpart_makes_them_different(tmp_path, specs):
    result = diff(*pair(tmp_path, specs, specs[:2]))
    assert not result.identical and "optimizer.seed=2 (A: aaaa_00002) has no counterpart in B" in result.first


def test_a_folder_without_results_is_one_line_exit_2(tmp_path, specs):
    write_sweep(tmp_path / "a", specs, "sweep-a", "aaaa")
    (tmp_path / "empty").mkdir()
    cli = run_cli("gepa_lab.results", "diff", str(tmp_path / "a"), str(tmp_path / "empty"))
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and "holds no results" in cli.stderr, cli.stderr
