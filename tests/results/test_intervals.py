"""95% intervals in the results tables, the leaderboard and `python -m gepa_lab.results effects`, over real Parquet
files written by the ResultsWriter; results written before the interval columns existed still open."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from results_data import write_trial
from gepa_lab.results.query import connect, effects, leaderboard, leaderboard_table, open_results, sql
from gepa_lab.results.stats import bootstrap_ci, paired_bootstrap_ci

INTERVAL_COLUMNS = ["seed_test_ci95_low", "seed_test_ci95_high", "best_test_ci95_low", "best_test_ci95_high",
                    "test_gain_ci95_low", "test_gain_ci95_high"]
SEED = [0.0] * 10 + [1.0] * 10  # the seed program on 20 test examples: 0.5
# the winners' per-example test scores of a 2x2 sweep: reflection_minibatch_size 3 is clearly better than 6
WINNERS = {
    (3, 0): [1.0] * 17 + [0.0] * 3,
    (3, 1): [1.0] * 15 + [0.0] * 5,
    (6, 0): [1.0] * 11 + [0.0] * 9,
    (6, 1): [1.0] * 9 + [0.0] * 11,
}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gepa_lab.results", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "250"})


def write_grid(out: Path, sweep_id: str = "s1") -> None:
    for (minibatch, seed), scores in WINNERS.items():
        write_trial(out, f"t-{minibatch}-{seed}", [0.5, 0.5 + minibatch / 100], [10, 40], sweep_id=sweep_id,
                    params={"optimizer.reflection_minibatch_size": minibatch, "optimizer.seed": seed},
                    test_examples=(SEED, scores))
    write_trial(out, "t-failed", [0.5], [10], params={"optimizer.reflection_minibatch_size": 6, "optimizer.seed": 2},
                sweep_id=sweep_id, fail=True)


def per_example_mean(*runs: list[float]) -> list[float]:
    return [sum(scores) / len(scores) for scores in zip(*runs)]


def test_trials_table_and_leaderboard_carry_the_intervals_and_the_val_test_gap(sweep_dir: Path):
    con = open_results(sweep_dir)
    row = sql(con, "SELECT * FROM trials WHERE trial_id = 't-b'").dicts()[0]
    # write_trial's per-example test scores: seed [0, 1, 0], winner [1, 1, 0]
    assert [row[c] for c in INTERVAL_COLUMNS] == pytest.approx([
        *bootstrap_ci([0.0, 1.0, 0.0]), *bootstrap_ci([1.0, 1.0, 0.0]), *paired_bootstrap_ci([0.0, 1.0, 0.0], [1.0, 1.0, 0.0])])
    assert sql(con, "SELECT best_test_ci95_low FROM trials WHERE status = 'failed'").rows == [(None,)]

    board = {r["trial_id"]: r for r in leaderboard(con).dicts()}
    assert board["t-b"]["val_test_gap"] == pytest.approx(0.6 - 0.55)
    assert board["t-b"]["test_gain"] == pytest.approx(0.55 - 0.3)
    assert board["t-b"]["best_test_ci95_high"] == row["best_test_ci95_high"]

    console = Console(record=True, width=250)
    console.print(leaderboard_table(connect([sweep_dir])))
    text = console.export_text()
    low, high = bootstrap_ci([1.0, 1.0, 0.0])
    assert f"0.550 [{low:.3f}, {high:.3f}]" in text and "val-test gap" in text and "95% bootstrap interval" in text


def test_results_written_before_the_interval_columns_still_open(sweep_dir: Path):
    # rewrite every trials file as an older gepa_lab wrote it: no interval columns
    for path in (sweep_dir / "results" / "trials").glob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(INTERVAL_COLUMNS), path)
    con = open_results(sweep_dir)
    rows = leaderboard(con).dicts()
    assert [r["trial_id"] for r in rows] == ["t-c", "t-b", "t-a", "t-d"]
    assert all(r["best_test_ci95_low"] is None and r["test_gain_ci95_high"] is None for r in rows)
    assert rows[1]["val_test_gap"] == pytest.approx(0.6 - 0.55)
    shown = cli(str(sweep_dir))
    assert shown.returncode == 0, shown.stderr
    assert "t-c" in shown.stdout and "0.550 " in shown.stdout and "val-test gap" in shown.stdout


def test_effects_give_each_value_its_test_score_and_interval(tmp_path: Path):
    out = tmp_path / "grid"
    write_grid(out)
    rows = effects(open_results(out)).dicts()
    by = {(r["key"], r["value"]): r for r in rows}
    assert list(by) == [("optimizer.reflection_minibatch_size", 3), ("optimizer.reflection_minibatch_size", 6),
                        ("optimizer.seed", 0), ("optimizer.seed", 1)]  # the failed trial's value 2 has no test score
    expected = {
        ("optimizer.reflection_minibatch_size", 3): per_example_mean(WINNERS[3, 0], WINNERS[3, 1]),
        ("optimizer.reflection_minibatch_size", 6): per_example_mean(WINNERS[6, 0], WINNERS[6, 1]),
        ("optimizer.seed", 0): per_example_mean(WINNERS[3, 0], WINNERS[6, 0]),
        ("optimizer.seed", 1): per_example_mean(WINNERS[3, 1], WINNERS[6, 1]),
    }
    for key, means in expected.items():
        row = by[key]
        assert row["trials"] == 2
        assert row["test_score"] == pytest.approx(sum(means) / len(means))
        assert (row["test_ci95_low"], row["test_ci95_high"]) == pytest.approx(bootstrap_ci(sorted(means)))
    assert by["optimizer.reflection_minibatch_size", 3]["test_score"] == pytest.approx(0.8)
    assert (by["optimizer.reflection_minibatch_size", 3]["trial_test_min"],
            by["optimizer.reflection_minibatch_size", 3]["trial_test_max"]) == pytest.approx((0.75, 0.85))

    # the best value of a key has no vs_best; the others are compared with it on the same examples (paired)
    assert by["optimizer.reflection_minibatch_size", 3]["vs_best"] is None
    worse = by["optimizer.reflection_minibatch_size", 6]
    pairs = sorted(zip(expected["optimizer.reflection_minibatch_size", 3], expected["optimizer.reflection_minibatch_size", 6]))
    assert worse["vs_best"] == pytest.approx(0.5 - 0.8)
    assert (worse["vs_best_ci95_low"], worse["vs_best_ci95_high"]) == pytest.approx(
        paired_bootstrap_ci([a for a, _ in pairs], [b for _, b in pairs]))
    assert worse["vs_best_ci95_high"] < 0  # minibatch 6 is worse beyond what the test examples' noise explains
    assert by["optimizer.seed", 1]["vs_best"] == pytest.approx(0.6 - 0.7)


def test_effects_cli_over_several_dirs_and_its_one_line_answers(tmp_path: Path):
    write_grid(tmp_path / "grid-a")
    write_grid(tmp_path / "grid-b", sweep_id="s2")
    both = cli("effects", str(tmp_path / "grid-a"), str(tmp_path / "grid-b"), "--format", "json")
    assert both.returncode == 0, both.stderr
    rows = {(r["key"], r["value"]): r for r in json.loads(both.stdout)}
    assert rows["optimizer.reflection_minibatch_size", 3]["trials"] == 4
    assert rows["optimizer.reflection_minibatch_size", 3]["test_score"] == pytest.approx(0.8)

    table = cli("effects", str(tmp_path / "grid-a"))
    assert table.returncode == 0, table.stderr
    line = next(line for line in table.stdout.splitlines() if "reflection_minibatch_size" in line and "│ 6 " in line)
    assert "0.500 [" in line and "-0.300 [" in line
    assert "bootstrap over the test examples" in cli("effects", "--help").stdout.replace("\n", " ").replace("  ", " ")

    write_trial(tmp_path / "single", "run", [0.4, 0.5], [5, 9], sweep_id="")
    single = cli("effects", str(tmp_path / "single"))
    assert single.returncode == 0 and single.stdout == ""
    assert single.stderr.count("\n") == 1 and "no swept key" in single.stderr

    (tmp_path / "empty").mkdir()
    empty = cli("effects", str(tmp_path / "empty"))
    assert empty.returncode == 2 and empty.stderr.startswith("error: ") and empty.stderr.count("\n") == 1
