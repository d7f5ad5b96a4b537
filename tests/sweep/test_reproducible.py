"""The same grid sweep with the same seeds on the simulator, run twice, finds the same thing (issue 13, item 8): the
same per-trial scores, and `python -m gepa_lab.results diff` finds every trial, candidate and example identical."""
import json

import pytest

from gepa_lab.results import query
from tests.conftest import run_cli
from tests.support.corpus import TINY_CORPUS

TINY_GRID = ["sweep=demo", "tracking=none", "~sweep.space.optimizer.reflection_minibatch_size",  # 2 trials: seeds 0, 1
             "optimizer.reflection_minibatch_size=4", "optimizer.max_metric_calls=60", *TINY_CORPUS]


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    outs = [tmp_path_factory.mktemp("reproducible") / name for name in ("first", "second")]
    for out in outs:
        result = run_cli("gepa_lab.sweep", *TINY_GRID, f"output_dir={out}", timeout=1200)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return outs


def scores_by_params(out) -> dict:
    rows = query.connect([out]).execute(
        "SELECT config_json, status, seed_val_score, seed_test_score, best_val_score, best_test_score, metric_calls "
        "FROM trials").fetchall()
    return {json.dumps(json.loads(c)["params"], sort_keys=True): tuple(r) for c, *r in rows}


def test_the_same_grid_sweep_twice_gives_the_same_per_trial_scores(two_sweeps):
    first, second = map(scores_by_params, two_sweeps)
    assert len(first) == 2 and all(row[0] == "completed" for row in first.values()), first
    assert first == second


def test_results_diff_finds_them_identical(two_sweeps):
    result = run_cli("gepa_lab.results", "diff", *map(str, two_sweeps))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("identical: 2 trials matched by their parameters"), result.stdout
