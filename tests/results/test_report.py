"""The HTML report (gepa_lab.results.report) of results the real ResultsWriter wrote: each figure equals the same query
on the tables, each image decodes, nothing is fetched from elsewhere, secrets are masked. A real run's report and a
real sweep's are checked in tests/test_run.py and tests/sweep/test_sweep_e2e.py."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gepa_lab.results.__main__ import main
from gepa_lab.results.report import word_diff
from gepa_lab.results.writer import write_table
from results_data import write_trial
from tests.conftest import run_cli
from tests.support.report_check import check_report


def test_every_figure_equals_its_query(sweep_dir: Path, capsys):
    main(["report", str(sweep_dir)])
    path = Path(capsys.readouterr().out.strip())
    assert path == sweep_dir / "report.html"
    page = check_report(path, sweep_dir)
    data = page.data
    # what the sweep of tests/results/conftest.py holds: t-c wins the tie on val with fewer metric calls
    assert data["best_trial"]["trial_id"] == "t-c" and [s["candidate_idx"] for s in data["lineage"]] == [0, 1]
    assert page.diffs[(1, "predict")] == [["=", "instruction "], ["-", "0"], ["+", "1"], ["=", " of t-c"]]
    assert [r[:3] for r in data["unfinished"]["rows"]] == [["t-d", "failed", "RuntimeError: boom"]]
    assert {r[0] for r in data["effects"]["rows"]} == {"optimizer.seed"} and len(page.images) == 2


def test_several_folders_need_out_and_show_where_each_trial_came_from(tmp_path: Path, sweep_dir: Path):
    other = tmp_path / "run-b"
    write_trial(other, "run", [0.3, 0.7], [10, 30], sweep_id="", params={"optimizer.seed": 9})
    refused = run_cli("gepa_lab.results", "report", str(sweep_dir), str(other))
    assert refused.returncode == 2 and refused.stderr.strip() == "error: a report of several folders needs --out FILE"
    out = tmp_path / "both.html"
    done = run_cli("gepa_lab.results", "report", str(sweep_dir), str(other), "--out", str(out))
    assert done.returncode == 0, done.stderr
    page = check_report(out, sweep_dir, other)
    assert "output_dir" in page.data["leaderboard"]["columns"] and page.data["best_trial"]["trial_id"] == "run"
    assert "output_dir" in page.data["unfinished"]["columns"]


def test_sweep_summary_gives_cache_savings_and_the_unconfirmed_gain(sweep_dir: Path):
    summary = {"sweep": "demo", "sweep_id": "s1", "val_gain": 0.2, "test_gain": 0.15, "val_gain_unconfirmed": 0.05,
               "lm_cache": {"hits": 7, "requests_saved": 7, "shared_hits": 3, "puts": 11, "entries": 11}}
    now = datetime.now(timezone.utc)
    write_table(sweep_dir / "results" / "sweeps" / "s1.parquet", "sweeps", [
        {"sweep_id": "s1", "name": "demo", "started_at": now, "ended_at": now, "summary_json": json.dumps(summary)}])
    main(["report", str(sweep_dir)])
    page = check_report(sweep_dir / "report.html", sweep_dir)
    assert page.rows("cache") == [["s1", "7", "3", "11", "11"]]
    text = (sweep_dir / "report.html").read_text()
    assert "<title>gepa_lab sweep demo</title>" in text and "did not confirm +0.050" in text


def test_a_secret_in_a_trials_error_is_masked(tmp_path: Path, monkeypatch):
    secret = "sk-report-canary-0123456789"
    out = tmp_path / "leaky"
    write_trial(out, "t-a", [0.4, 0.5], [10, 40])
    write_trial(out, "t-b", [0.4], [10], fail=True)
    trial = out / "results" / "trials" / "t-b.parquet"
    import pyarrow.parquet as pq

    row = pq.read_table(trial).to_pylist()[0]
    write_table(trial, "trials", [{**row, "error": f"AuthenticationError: bad key {secret}"}])
    monkeypatch.setenv("GEPA_LAB_REPORT_API_KEY", secret)
    main(["report", str(out)])
    text = (out / "report.html").read_text()
    assert secret not in text and "AuthenticationError: bad key ***" in text


def test_a_folder_without_results_is_one_line(tmp_path: Path):
    done = run_cli("gepa_lab.results", "report", str(tmp_path / "nothing"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "does not exist" in done.stderr


words = st.lists(st.sampled_from(["a", "b", "c", "the", "label", " ", "\n", "  "]), max_size=30).map("".join)


@given(words, words)
def test_a_word_diff_gives_back_both_texts(old: str, new: str):
    segments = word_diff(old, new)
    assert "".join(t for op, t in segments if op != "+") == old
    assert "".join(t for op, t in segments if op != "-") == new
