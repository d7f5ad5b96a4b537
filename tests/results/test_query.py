"""gepa_lab.results.query over real Parquet files written by the ResultsWriter."""
from __future__ import annotations

from pathlib import Path

import pytest

from results_data import write_trial
from gepa_lab.results.query import (
    TABLES, ResultsError, best_trial, leaderboard, newest_output_dir, open_results, sql, trial_progress,
    varying_params,
)
from gepa_lab.results.schema import SCHEMAS


def test_views_have_schema_columns_and_rows(sweep_dir: Path):
    con = open_results(sweep_dir)
    for table in TABLES:
        columns = [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
        assert columns == [*SCHEMAS[table].names, "output_dir"], table
    assert sql(con, "SELECT count(*) FROM trials").rows == [(4,)]
    assert sql(con, "SELECT count(*) FROM candidates").rows == [(2 + 3 + 2 + 1,)]
    assert sql(con, "SELECT count(*) FROM lm_usage").rows == [(6,)]
    assert sql(con, "SELECT DISTINCT output_dir FROM trials").rows == [(str(sweep_dir.resolve()),)]


def test_leaderboard_orders_by_val_then_fewer_metric_calls(sweep_dir: Path):
    board = leaderboard(open_results(sweep_dir))
    rows = board.dicts()
    assert [r["trial_id"] for r in rows] == ["t-c", "t-b", "t-a", "t-d"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["best_val_score"] == rows[1]["best_val_score"] == 0.6
    assert rows[0]["metric_calls"] < rows[1]["metric_calls"]
    assert rows[-1]["status"] == "failed" and rows[-1]["best_val_score"] is None
    assert rows[0]["val_gain"] == pytest.approx(0.2)
    # the swept parameter is a column; where trials went (output_dir) and tracking are not
    assert "optimizer.seed" in board.columns and [r["optimizer.seed"] for r in rows] == [2, 1, 0, 3]
    assert not any(c.startswith(("tracking", "output_dir")) for c in board.columns)
    assert len(leaderboard(open_results(sweep_dir), limit=2)) == 2


def test_best_trial_breaks_ties_by_metric_calls(sweep_dir: Path):
    best = best_trial(open_results(sweep_dir))
    assert best["trial_id"] == "t-c" and best["metric_calls"] == 50
    assert best["config"]["optimizer"]["seed"] == 2


def test_several_dirs_at_once(tmp_path: Path, sweep_dir: Path):
    other = tmp_path / "run-2"
    # the same trial id in another folder stays a separate trial
    write_trial(other, "t-a", [0.5, 0.7], [10, 30], params={"optimizer.seed": 9}, sweep_id="")
    con = open_results(sweep_dir, other)
    board = leaderboard(con).dicts()
    assert [(r["trial_id"], Path(r["output_dir"]).name) for r in board[:2]] == [("t-a", "run-2"), ("t-c", "sweep-demo")]
    assert sql(con, "SELECT count(*) FROM trials WHERE trial_id = 't-a'").rows == [(2,)]
    assert best_trial(con)["output_dir"] == str(other.resolve())
    curves = trial_progress(con)
    assert curves[(str(other.resolve()), "", "t-a")] == [(10, 0.5), (30, 0.7)]


def test_progress_is_the_running_best(sweep_dir: Path):
    curves = trial_progress(open_results(sweep_dir))
    assert curves[(str(sweep_dir.resolve()), "s1", "t-b")] == [(10, 0.4), (40, 0.45), (90, 0.6)]


def test_empty_tables_stay_queryable(tmp_path: Path):
    # a trial that started (trials row) but scored nothing yet: the other tables have no files
    out = tmp_path / "fresh"
    (out / "results" / "trials").mkdir(parents=True)
    con = open_results(out)
    assert sql(con, "SELECT count(*), max(val_score) FROM candidates").rows == [(0, None)]
    assert len(leaderboard(con)) == 0 and leaderboard(con).columns[:2] == ["rank", "trial_id"]
    assert best_trial(con) is None
    types = dict((r[0], r[1]) for r in con.execute("DESCRIBE candidates").fetchall())
    assert types["parents"] == "BIGINT[]" and types["created_at"].startswith("TIMESTAMP")


def test_temp_files_of_writes_in_progress_are_skipped(sweep_dir: Path):
    (sweep_dir / "results" / "trials" / ".t-z.parquet.abc.tmp.parquet").write_bytes(b"half a file")
    assert sql(open_results(sweep_dir), "SELECT count(*) FROM trials").rows == [(4,)]


def test_dir_without_results_is_an_error(tmp_path: Path, sweep_dir: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="holds no results"):
        open_results(tmp_path / "empty")
    with pytest.raises(ResultsError, match="does not exist"):
        open_results(tmp_path / "missing")
    # non-strict: skipped
    con = open_results(sweep_dir, tmp_path / "empty", strict=False)
    assert sql(con, "SELECT count(*) FROM trials").rows == [(4,)]


def test_results_folder_itself_can_be_given(sweep_dir: Path):
    con = open_results(sweep_dir / "results")
    assert sql(con, "SELECT DISTINCT output_dir FROM trials").rows == [(str(sweep_dir.resolve()),)]


def test_bad_sql_is_one_line(sweep_dir: Path):
    con = open_results(sweep_dir)
    with pytest.raises(ResultsError) as err:
        sql(con, "SELECT nope FROM trials")
    message = str(err.value)
    assert message.startswith("bad SQL:") and "nope" in message and "\n" not in message


def test_named_queries_run(sweep_dir: Path):
    from gepa_lab.results.query import QUERIES

    con = open_results(sweep_dir)
    for name in QUERIES:
        sql(con, name)
    changed = sql(con, "changed").dicts()
    # winners of t-a/t-b/t-c fixed test example "0" (seed 0.0 -> 1.0; example ids are strings)
    assert {(r["trial_id"], r["example_id"], r["delta"]) for r in changed} == {
        ("t-a", "0", 1.0), ("t-b", "0", 1.0), ("t-c", "0", 1.0)}
    winners = {r["trial_id"]: r["instruction"] for r in sql(con, "winners").dicts()}
    assert winners["t-b"] == "instruction 2 of t-b"
    assert sql(con, "status").dicts()[0] == {"status": "completed", "trials": 3}


def test_varying_params_ignores_output_dir_and_tracking():
    import json

    configs = [json.dumps({"output_dir": f"/o/{i}", "tracking": {"x": i}, "a": {"b": i % 2, "c": 1}}) for i in range(3)]
    assert varying_params(configs) == {0: {"a.b": 0}, 1: {"a.b": 1}, 2: {"a.b": 0}}
    assert varying_params([configs[0]]) == {0: {}}


def test_newest_output_dir(tmp_path: Path):
    import os

    with pytest.raises(ResultsError):
        newest_output_dir(tmp_path / "outputs")
    for i, name in enumerate(["old", "new"]):
        (tmp_path / "outputs" / name).mkdir(parents=True)
        os.utime(tmp_path / "outputs" / name, (1000 + i, 1000 + i))
    assert newest_output_dir(tmp_path / "outputs").name == "new"


def test_params_recorded_by_a_sweep_trial_are_the_columns():
    import json

    # a Ray trial records {"params": {...}, **config}: a swept key that happens to hold one value still shows
    configs = [json.dumps({"params": {"optimizer.seed": 1}, "optimizer": {"seed": 1, "x": i}}) for i in range(2)]
    assert varying_params(configs) == {0: {"optimizer.seed": 1, "optimizer.x": 0}, 1: {"optimizer.seed": 1, "optimizer.x": 1}}


def test_connect_and_leaderboard_table(sweep_dir: Path):
    from rich.console import Console

    from gepa_lab.results.query import connect, leaderboard_table

    console = Console(record=True, width=200)
    console.print(leaderboard_table(connect([sweep_dir]), limit=2))
    text = console.export_text()
    assert "best val" in text and "seed" in text
    assert text.index("t-c") < text.index("t-b") and "t-a" not in text


def test_documented_example_queries_run(sweep_dir: Path):
    import re

    page = (Path(__file__).resolve().parents[2] / "docs" / "results.md").read_text()
    block = re.search(r"```sql\n(.*?)```", page, re.S).group(1)
    statements = [s.strip() for s in block.split(";") if s.strip()]
    assert len(statements) == 4
    con = open_results(sweep_dir)
    results = [sql(con, s) for s in statements]
    assert results[0].dicts()[0]["seed"] == "2"  # t-c first: best val, fewer metric calls
    assert {r["trial_id"] for r in results[1].dicts()} == {"t-a", "t-b", "t-c", "t-d"}
