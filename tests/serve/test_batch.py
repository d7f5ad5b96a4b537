"""python -m gepa_lab.serve batch: CSV, JSONL and Parquet in, Parquet out (read back with DuckDB), through the simulator."""
import csv
import json
import subprocess
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

CHAMPION = "models:/gepa_lab-reviews@champion"
REVIEWS = ["So happy with this kettle.", "It is fine, average really.", "Broke after a day."] * 4


def batch(*args):
    return subprocess.run([sys.executable, "-m", "gepa_lab.serve", "batch", *args], capture_output=True, text=True, timeout=300)


def test_scores_csv_jsonl_and_parquet_into_parquet(sweep, sim, tmp_path):
    with open(tmp_path / "in.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "review"), *enumerate(REVIEWS)])
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "review": r}) + "\n" for i, r in enumerate(REVIEWS)))
    pq.write_table(pa.table({"id": list(range(len(REVIEWS))), "review": REVIEWS[:-1] + [None]}), tmp_path / "in.parquet")
    for name in ("in.csv", "in.jsonl", "in.parquet"):
        out = tmp_path / f"{name}.out.parquet"
        proc = batch(f"model={CHAMPION}", f"tracking_uri={sweep['registry_uri']}", f"api_base={sim.url}",
                     f"input={tmp_path / name}", f"output={out}", "max_in_flight=4")
        rows = duckdb.sql(f"SELECT id, review, sentiment, model_version, error FROM '{out}' ORDER BY id").fetchall()
        assert len(rows) == len(REVIEWS) and {r[3] for r in rows} == {"1"}
        assert rows[0][2] == "positive" and rows[0][4] is None  # "happy" -> positive: the winner's rule
        assert f"of {len(REVIEWS)} rows" in proc.stderr and "scoring" in proc.stderr  # the summary line and the progress
        if name == "in.parquet":  # its last review is null: that row says why, the others are answered
            assert proc.returncode == 1 and rows[-1][2] is None and rows[-1][4].startswith("review:")
            assert all(r[4] is None for r in rows[:-1])
        else:
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert all(r[2] in {"positive", "negative", "neutral"} and r[4] is None for r in rows)


def test_bad_input_is_one_line_and_writes_nothing(sweep, sim, tmp_path):
    (tmp_path / "in.csv").write_text("id,text\n1,hello\n")
    out = tmp_path / "out.parquet"
    common = [f"model={CHAMPION}", f"tracking_uri={sweep['registry_uri']}", f"api_base={sim.url}"]
    for args, says in (([f"input={tmp_path / 'in.csv'}", f"output={out}"], "lacks the model's input column(s) review"),
                       ([f"input={tmp_path / 'nope.csv'}", f"output={out}"], "no such file"),
                       ([f"input={tmp_path / 'in.csv'}", f"output={tmp_path / 'out.csv'}"], "the output is Parquet"),
                       ([f"input={tmp_path / 'in.csv'}"], "output: Field required"),
                       (["max_in_flight=0", f"input={tmp_path / 'in.csv'}", f"output={out}"], "max_in_flight")):
        proc = batch(*common, *args)
        assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    assert not out.exists()
