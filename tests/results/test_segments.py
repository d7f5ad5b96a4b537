"""PBT segments in the results tables (gepa_lab/sweep/pbt.py): a trial's later segment runs on a copy of a donor's
GEPA state, so its candidate indices restart from the donor's. Its rows carry their segment and never overwrite the
earlier segment's files; the queries on a trial's winner read its last segment (the trials row's), where it was scored
on test. The real PBT sweep is tests/sweep/test_pbt.py."""
from __future__ import annotations

from pathlib import Path

from gepa_lab.events import EventStream
from gepa_lab.results.compact import compact
from gepa_lab.results.diff import diff
from gepa_lab.results.query import example_changes, open_results, sql
from gepa_lab.results.report import lineage
from gepa_lab.results.writer import ResultsWriter, write_table
from gepa_lab.sweep.driver import winner_test_scores
from results_data import BASE_CONFIG, write_trial

SEED_TEST = [0.0, 0.0, 0.0]


def write_two_segments(out: Path, last_vals: tuple[float, float] = (0.5, 0.9)) -> None:
    """Trial t: segment 0 and segment 1 both crown their candidate 1, which are different candidates with other
    test scores."""
    write_trial(out, "t", [0.2, 0.4], [10, 20], test_examples=(SEED_TEST, [1.0, 0.0, 0.0]))
    write_trial(out, "t", list(last_vals), [30, 40], test_examples=(SEED_TEST, [1.0, 1.0, 1.0]), segment=1)


def test_two_segments_keep_their_rows_apart_and_the_winner_is_read_from_the_last(tmp_path: Path):
    out = tmp_path / "sweep"
    write_two_segments(out)
    names = sorted(p.name for p in (out / "results" / "evaluations").iterdir())
    # per segment: the seed's and the winner's test rows (each written at once) and two of val rows (written with GEPA's
    # saved states)
    assert names == [*(f"t-{n:05d}.parquet" for n in range(4)), *(f"t-s001-{n:05d}.parquet" for n in range(4))]
    for _ in ("parts", "compacted"):
        con = open_results(out)
        assert sql(con, "SELECT segment, candidate_idx, instruction FROM candidates ORDER BY ALL").rows == [
            (0, 0, "instruction 0 of t"), (0, 1, "instruction 1 of t"),
            (1, 0, "instruction 0 of t in segment 1"), (1, 1, "instruction 1 of t in segment 1")]
        # every row of both segments: 3 seed and 3 winner test scores, 2 candidates x 2 val examples, each
        assert sql(con, "SELECT segment, count(*) FROM evaluations GROUP BY ALL ORDER BY ALL").rows == [(0, 10), (1, 10)]
        assert sql(con, "SELECT segment FROM trials").rows == [(1,)]
        assert sql(con, _named("winners")).column("instruction") == ["instruction 1 of t in segment 1"]
        assert sql(con, "SELECT example_id, seed_score, winner_score FROM (" + _named("changed") + ") ORDER BY ALL").rows == [
            ("0", 0.0, 1.0), ("1", 0.0, 1.0), ("2", 0.0, 1.0)]
        assert example_changes(con).counts == {"fixed": 3, "broken": 0, "wrong": 0}
        assert winner_test_scores(out, "t", {"segment": 1, "best_candidate_idx": 1}) == {"0": 1.0, "1": 1.0, "2": 1.0}
        assert winner_test_scores(out, "t", {"best_candidate_idx": 1}) == {"0": 1.0, "1": 0.0, "2": 0.0}  # outside PBT
        compact(out / "results")


def _named(query: str) -> str:
    from gepa_lab.results.query import QUERIES

    return QUERIES[query][1]


def test_diff_names_the_segment_of_the_candidate_that_differs(tmp_path: Path):
    write_two_segments(tmp_path / "a")
    write_two_segments(tmp_path / "b", last_vals=(0.5, 0.8))
    assert diff(tmp_path / "a", tmp_path / "a").identical
    found = diff(tmp_path / "a", tmp_path / "b")
    assert found.first.startswith("trial (no parameters) (A: t, B: t): segment 1 candidate 1, val example 0: score 0.9 in A, 0.8 in B")


def test_the_report_walks_a_pbt_winner_back_through_the_candidates_it_inherited(tmp_path: Path):
    """Trial t's segment 1 continues from trial d's state (candidates 0 and 1) and makes candidate 2 from 1: the
    lineage table says where 0 and 1 were made, and t's own segment 0 (other candidates 0 and 1) stays out."""
    out = tmp_path / "sweep"
    write_trial(out, "d", [0.3, 0.6], [10, 20], sweep_id="s1")
    write_trial(out, "t", [0.3, 0.4], [10, 20], sweep_id="s1")
    events = EventStream("t", [ResultsWriter(out / "results", sweep_id="s1", trial_config=BASE_CONFIG, segment=1)])
    events.emit("trial_started", config=BASE_CONFIG, config_hash="h", manifest_hash="m", git_commit="abc")
    for idx, parents, val in ((0, [], 0.3), (2, [1], 0.8)):  # GEPA re-scores the seed; 1 it holds from d
        events.emit("candidate", iteration=idx, candidate_idx=idx, parents=parents, val_score=val, metric_calls=idx,
                    instructions={"predict": f"instruction {idx} of t in segment 1"})
    events.emit("trial_finished", summary={
        "seed_val_score": 0.3, "seed_test_score": 0.3, "best_val_score": 0.8, "best_test_score": 0.5,
        "best_candidate_idx": 2, "num_candidates": 3, "metric_calls": 30, "lm_calls": 3, "wall_seconds": 1.0,
        "program_path": "p", "lm_usage": {}})
    write_table(out / "results" / "lineage" / "t-001.parquet", "lineage", [
        {"sweep_id": "s1", "trial_id": "t", "segment": 1, "candidate_idx": idx, "origin_trial_id": origin[0],
         "origin_segment": 0 if origin[0] == "d" else 1, "origin_candidate_idx": idx}
        for idx, origin in ((0, "d"), (1, "d"), (2, "t"))])
    con = open_results(out)
    trial = sql(con, "SELECT * FROM trials WHERE trial_id = 't'").dicts()[0]
    chain = lineage(con, trial)
    assert [(s["candidate_idx"], s["instructions"]["predict"]) for s in chain] == [
        (0, "instruction 0 of t in segment 1"), (1, "instruction 1 of d"), (2, "instruction 2 of t in segment 1")]
    assert sql(con, _named("winners")).column("instruction")[:1] == ["instruction 2 of t in segment 1"]
