"""python -m gepa_lab.results as a user runs it (subprocess)."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from results_data import write_trial

from gepa_lab.results.stats import paired_bootstrap_ci


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gepa_lab.results", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_leaderboard_table_csv_json(sweep_dir: Path):
    table = cli(str(sweep_dir))
    assert table.returncode == 0, table.stderr
    lines = [line for line in table.stdout.splitlines() if line.startswith("│")]
    assert [line.split("│")[2].strip() for line in lines] == ["t-c", "t-b", "t-a", "t-d"]

    rows = list(csv.DictReader(io.StringIO(cli(str(sweep_dir), "--format", "csv", "--limit", "2").stdout)))
    assert [r["trial_id"] for r in rows] == ["t-c", "t-b"] and rows[0]["optimizer.seed"] == "2"

    data = json.loads(cli(str(sweep_dir), "--format", "json").stdout)
    assert data[0]["trial_id"] == "t-c" and data[0]["best_val_score"] == 0.6 and data[-1]["status"] == "failed"


def test_sql_over_several_dirs(tmp_path: Path, sweep_dir: Path):
    other = tmp_path / "run-x"
    write_trial(other, "run", [0.1, 0.2], [5, 9], sweep_id="")
    out = cli(str(sweep_dir), str(other), "--sql", "SELECT count(*) AS n FROM trials", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"n": 5}]
    named = cli(str(sweep_dir), "--sql", "status", "--format", "csv")
    assert named.stdout.splitlines()[:2] == ["status,trials", "completed,3"]


def test_default_dir_is_the_newest_under_outputs(tmp_path: Path):
    root = tmp_path / "project"
    write_trial(root / "outputs" / "old", "t-old", [0.1], [1])
    write_trial(root / "outputs" / "new", "t-new", [0.2], [1])
    os.utime(root / "outputs" / "old", (1, 1))
    out = cli("--format", "json", env={"GEPA_LAB_ROOT": str(root)})
    assert out.returncode == 0, out.stderr
    assert [r["trial_id"] for r in json.loads(out.stdout)] == ["t-new"]


def test_errors_are_one_line_exit_2(tmp_path: Path, sweep_dir: Path):
    (tmp_path / "empty").mkdir()
    for args in ([str(tmp_path / "empty")], [str(sweep_dir), "--sql", "SELEC * FROM trials"],
                 [str(sweep_dir), "--sql", "SELECT * FROM no_such_table"]):
        out = cli(*args)
        assert out.returncode == 2, (args, out)
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
        assert "Traceback" not in out.stderr and out.stdout == ""


def test_plot_writes_pngs(sweep_dir: Path):
    out = cli("plot", str(sweep_dir))
    assert out.returncode == 0, out.stderr
    paths = [Path(p) for p in out.stdout.split()]
    assert [p.name for p in paths] == ["progress.png", "seed_vs_winner.png"]
    for p in paths:
        assert p.parent == sweep_dir / "plots" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_lms_compares_the_task_lms_per_task_with_paired_intervals(tmp_path: Path, sweep_dir: Path):
    seed = [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    a_m1, a_m2 = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    out = tmp_path / "tasks-x-lms"
    for trial_id, task, lm, vals, best in [("a1", "a", "m1", [0.2, 0.5], a_m1), ("a2", "a", "m2", [0.2, 0.6], a_m2),
                                           ("b1", "b", "m1", [0.1, 0.9], a_m1), ("c1", "c", "m1", [0.1, 0.4], a_m1)]:
        write_trial(out, trial_id, vals, [10, 20], params={"task.name": task, "lm.model": lm}, test_examples=(seed, best))

    table = cli("lms", str(out))
    assert table.returncode == 0, table.stderr
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in table.stdout.splitlines() if line.startswith("│")]
    # task a only (b and c ran one LM); m2 won on val, m1 is 2 of 6 examples behind it, with its paired interval
    low, high = paired_bootstrap_ci(a_m2, a_m1)
    assert [row[:4] for row in rows] == [["a", "lm.model=m2", "1", "a2"], ["a", "lm.model=m1", "1", "a1"]]
    assert rows[0][-1] == "" and rows[1][-1] == f"-0.333 [{low:+.3f}, {high:+.3f}]", rows
    assert "paired" in table.stdout  # the caption says how the intervals are made

    data = json.loads(cli("lms", str(out), "--task", "a", "--format", "json").stdout)
    assert [(r["lm"], r["vs_winner_ci95_low"], r["vs_winner_ci95_high"]) for r in data] == [
        ("lm.model=m2", None, None), ("lm.model=m1", pytest.approx(low), pytest.approx(high))]

    # nothing to compare: one line, exit 2
    for args, says in [([str(sweep_dir)], "no task in"), ([str(out), "--task", "b"], "task 'b' in"),
                       ([str(out), "--task", "zz"], "no task 'zz' in")]:
        refused = cli("lms", *args)
        assert refused.returncode == 2 and refused.stdout == "", (args, refused)
        assert refused.stderr.startswith(f"error: {says}") and refused.stderr.count("\n") == 1, refused.stderr
