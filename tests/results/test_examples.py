"""Per-example truth: `python -m gepa_lab.results examples` over results written by the real ResultsWriter, and
results folders written before example ids were corpus ids (int64 indices, no prediction or feedback) stay readable."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gepa_lab.corpus import ensure_prepared, load_corpus_config, read_manifest, read_split
from gepa_lab.events import EventStream
from gepa_lab.results.query import example_changes, open_results, sql
from gepa_lab.results.writer import ResultsWriter, write_table
from results_data import write_trial
from test_results_cli import cli

# test example -> (seed score, winner score): fixed, broken, still wrong, right both times, partly right both times
SCORES = [(0.0, 1.0), (1.0, 0.0), (0.0, 0.0), (1.0, 1.0), (0.5, 0.5)]


def corpus() -> tuple[list[dict], str]:
    folder = ensure_prepared(load_corpus_config("example_csv"), quiet=True)
    return read_split(folder, "test")[: len(SCORES)], read_manifest(folder)["manifest_hash"]


def write_run(out: Path, manifest_hash: str, ids: list[str]) -> None:
    """A run whose winner (candidate 1) is scored SCORES on test against the seed, with predictions and feedback."""
    config = {"output_dir": str(out), "task": {"name": "reviews"}, "corpus": {"name": "example_csv"},
              "optimizer": {"perfect_score": 1.0}}
    events = EventStream("run", [ResultsWriter(out / "results", sweep_id="", trial_config=config)])
    events.emit("trial_started", config=config, config_hash="h", manifest_hash=manifest_hash, git_commit="abc")
    for idx in (0, 1):
        scores = {i: s[idx] for i, s in zip(ids, SCORES)}
        events.emit("evaluation", split="test", candidate_idx=idx, scores=scores,
                    predictions={i: json.dumps({"sentiment": f"guess {idx} on {i}"}) for i in ids},
                    feedback={i: f"feedback {idx} on {i}" for i in ids})
    events.emit("candidate", iteration=1, candidate_idx=1, parents=[0], instructions={"p": "x"}, val_score=0.9, metric_calls=9)
    events.emit("trial_finished", summary={
        "seed_val_score": 0.5, "seed_test_score": 0.5, "best_val_score": 0.9, "best_test_score": 0.5,
        "best_candidate_idx": 1, "num_candidates": 2, "metric_calls": 9, "lm_calls": 9, "wall_seconds": 1.0,
        "program_path": str(out / "program.json"), "lm_usage": {}})


def test_examples_shows_fixed_broken_and_still_wrong_with_feedback_and_inputs(tmp_path: Path):
    rows, manifest_hash = corpus()
    ids = [r["id"] for r in rows]
    write_run(tmp_path / "run", manifest_hash, ids)

    out = cli("examples", str(tmp_path / "run"), "--format", "json")
    assert out.returncode == 0, out.stderr
    shown = {r["example_id"]: r for r in json.loads(out.stdout)}
    assert [r["outcome"] for r in json.loads(out.stdout)] == ["fixed", "broken", "wrong", "wrong"]
    assert set(shown) == {ids[0], ids[1], ids[2], ids[4]}  # the example right both times is not shown
    fixed = shown[ids[0]]
    assert (fixed["seed_score"], fixed["winner_score"]) == (0.0, 1.0)
    assert fixed["feedback"] == f"feedback 1 on {ids[0]}"
    assert json.loads(fixed["winner_prediction"]) == {"sentiment": f"guess 1 on {ids[0]}"}
    assert json.loads(fixed["seed_prediction"]) == {"sentiment": f"guess 0 on {ids[0]}"}
    assert json.loads(fixed["inputs"]) == {"review": rows[0]["review"]}  # from the corpus the run used

    table = cli("examples", str(tmp_path / "run"), "--limit", "1")
    assert table.returncode == 0, table.stderr
    assert "1 fixed, 1 broken, 2 still wrong" in table.stdout and "at most 1 of each" in table.stdout
    limited = json.loads(cli("examples", str(tmp_path / "run"), "--limit", "1", "--format", "json").stdout)
    # within an outcome, by example id
    assert [(r["outcome"], r["example_id"]) for r in limited] == [("fixed", ids[0]), ("broken", ids[1]),
                                                                  ("wrong", min(ids[2], ids[4]))]


def test_examples_without_the_corpus_says_so_and_an_unknown_trial_is_one_line(tmp_path: Path):
    rows, _ = corpus()
    write_run(tmp_path / "run", "another manifest", [r["id"] for r in rows])
    out = cli("examples", str(tmp_path / "run"), "--format", "csv")
    assert out.returncode == 0, out.stderr
    assert "corpus 'example_csv' changed since the trial ran" in out.stderr
    assert len(out.stdout.splitlines()) == 1 + 4
    wrong = cli("examples", str(tmp_path / "run"), "--trial", "nope")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "no finished trial 'nope' (trials: run)" in wrong.stderr


OLD_EVALUATIONS = pa.schema([("sweep_id", pa.string()), ("trial_id", pa.string()), ("split", pa.string()),
                             ("candidate_idx", pa.int64()), ("example_id", pa.int64()), ("score", pa.float64())])


def write_old_format(out: Path) -> None:
    """A run's results as written before example ids were corpus ids: example_id int64, no prediction or feedback."""
    write_table(out / "results" / "trials" / "run.parquet", "trials", [{
        "sweep_id": "", "trial_id": "run", "status": "completed", "config_json": "{}", "best_candidate_idx": 1,
        "seed_val_score": 0.5, "best_val_score": 0.75, "seed_test_score": 0.0, "best_test_score": 0.5, "metric_calls": 5}])
    for seq, (split, idx, scores) in enumerate([("test", 0, [0.0, 0.0]), ("val", 0, [1.0, 0.0]), ("val", 1, [1.0, 0.5]),
                                                ("test", 1, [1.0, 0.0])]):
        rows = [{"sweep_id": "", "trial_id": "run", "split": split, "candidate_idx": idx, "example_id": i, "score": s}
                for i, s in enumerate(scores)]
        pq.write_table(pa.Table.from_pylist(rows, schema=OLD_EVALUATIONS), out / "results" / "evaluations" / f"run-{seq:05d}.parquet")


def test_an_old_format_results_dir_stays_readable_alone_and_beside_a_new_one(tmp_path: Path):
    (tmp_path / "old" / "results" / "evaluations").mkdir(parents=True)
    write_old_format(tmp_path / "old")
    con = open_results(tmp_path / "old")
    assert sql(con, "SELECT typeof(example_id) AS t, count(*) AS n FROM evaluations GROUP BY t").rows == [("VARCHAR", 8)]
    assert sql(con, "SELECT DISTINCT segment FROM evaluations").rows == [(0,)]  # written before segments: one, 0
    assert sql(con, "changed").dicts() == [{"trial_id": "run", "example_id": "0", "seed_score": 0.0, "winner_score": 1.0,
                                            "delta": 1.0}]
    assert sql(con, "SELECT count(*) FROM evaluations WHERE prediction IS NULL AND feedback IS NULL").rows == [(8,)]
    changes = example_changes(con)
    assert [(r[0], r[1]) for r in changes.result.rows] == [("fixed", "0"), ("wrong", "1")]

    write_trial(tmp_path / "new", "t-new", [0.4, 0.6], [10, 40])
    both = open_results(tmp_path / "old", tmp_path / "new")
    assert sql(both, "SELECT count(DISTINCT output_dir) FROM evaluations").rows == [(2,)]
    assert sql(both, "SELECT DISTINCT typeof(example_id) FROM evaluations").rows == [("VARCHAR",)]
    out = cli("examples", str(tmp_path / "old"), "--format", "json")
    assert out.returncode == 0, out.stderr
    assert [r["example_id"] for r in json.loads(out.stdout)] == ["0", "1"]
