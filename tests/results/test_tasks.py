"""Results of a sweep over several tasks and LMs (real Parquet from the real ResultsWriter): a winner per task, a
leaderboard ranked within each task, and the task LMs compared per task with paired test-score intervals."""
import pytest

from gepa_lab.results import query
from gepa_lab.results.stats import paired_bootstrap_ci
from tests.results.results_data import write_trial

SEED = [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]


@pytest.fixture
def con(tmp_path):
    # task a: m2 wins on val (0.6); task b: m1 wins (0.9) though m2 scores better on test
    for trial_id, task, lm, vals, best in [
        ("a1", "a", "m1", [0.2, 0.5], [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]),
        ("a2", "a", "m2", [0.2, 0.6], [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]),
        ("b1", "b", "m1", [0.1, 0.9], [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
        ("b2", "b", "m2", [0.1, 0.4], [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]),
        ("b3", "b", "m2", [0.1, 0.3], [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]),
    ]:
        write_trial(tmp_path, trial_id, vals, [10, 20], params={"task.name": task, "lm.model": lm},
                    test_examples=(SEED, best))
    return query.connect([tmp_path])


def test_a_winner_per_task(con):
    assert {task: row["trial_id"] for task, row in query.best_trials(con).items()} == {"a": "a2", "b": "b1"}


def test_leaderboard_ranks_within_each_task(con):
    board = query.leaderboard(con).dicts()
    assert [(r["task"], r["rank"], r["trial_id"]) for r in board] == [
        ("a", 1, "a2"), ("a", 2, "a1"), ("b", 1, "b1"), ("b", 2, "b2"), ("b", 3, "b3")]
    assert all("lm.model" in r for r in board) and not any(k.startswith("task.") for k in board[0])
    assert len(query.leaderboard(con, limit=1)) == 2  # the limit is per task


def test_lms_compared_per_task_with_paired_intervals(con):
    table = {(r["task"], r["lm"]): r for r in query.lm_comparison(con).dicts()}
    assert set(table) == {("a", "lm.model=m1"), ("a", "lm.model=m2"), ("b", "lm.model=m1"), ("b", "lm.model=m2")}
    assert table[("a", "lm.model=m2")]["vs_winner"] is None and table[("b", "lm.model=m1")]["vs_winner"] is None
    b2 = table[("b", "lm.model=m2")]
    assert (b2["trials"], b2["trial_id"]) == (2, "b2")  # the LM's best trial on val stands for it
    winner, ours = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert b2["vs_winner"] == pytest.approx(3 / 6)
    assert (b2["vs_winner_ci95_low"], b2["vs_winner_ci95_high"]) == pytest.approx(paired_bootstrap_ci(winner, ours))
    a1 = table[("a", "lm.model=m1")]
    assert a1["vs_winner"] == pytest.approx(-2 / 6) and a1["vs_winner_ci95_high"] <= 0
