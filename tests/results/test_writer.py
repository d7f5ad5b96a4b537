"""gepa_lab.results.writer.ResultsWriter: when buffered rows reach disk."""
from pathlib import Path

import pyarrow.parquet as pq

from gepa_lab.events import Event
from gepa_lab.results.writer import ResultsWriter


def test_the_rows_a_saved_gepa_state_holds_are_written_when_gepa_saves_it(tmp_path: Path):
    """A run resumed from GEPA's state does not record the seed's val scores again, so they must be on disk by the time
    the state is: GEPA saves it before its first iteration."""
    writer = ResultsWriter(tmp_path, sweep_id="s")
    writer.handle(Event("candidate", "t", {"candidate_idx": 0, "iteration": 0, "parents": [], "val_score": 0.5,
                                           "metric_calls": 10, "instructions": {"self": "seed"}}))
    writer.handle(Event("evaluation", "t", {"split": "val", "candidate_idx": 0, "scores": {"a": 1.0, "b": 0.0}}))
    assert not (tmp_path / "candidates").exists()  # buffered
    writer.handle(Event("state_saved", "t", {"run_dir": str(tmp_path / "gepa"), "best_val": 0.5, "metric_calls": 10}))
    [part] = (tmp_path / "candidates").iterdir()
    assert [(r["candidate_idx"], r["instruction"]) for r in pq.read_table(part).to_pylist()] == [(0, "seed")]
    assert len(pq.read_table(next((tmp_path / "evaluations").iterdir())).to_pylist()) == 2


def candidate(idx: int) -> Event:
    return Event("candidate", "t", {"candidate_idx": idx, "iteration": idx, "parents": [0] if idx else [],
                                    "val_score": 0.5, "metric_calls": 10 * (idx + 1), "instructions": {"self": f"c{idx}"}})


def recorded(folder: Path) -> list[int]:
    return sorted(r["candidate_idx"] for part in folder.glob("*.parquet") for r in pq.read_table(part).to_pylist())


def test_a_stopped_trial_keeps_the_rows_of_the_candidates_its_saved_state_holds_and_no_other(tmp_path: Path):
    """A rerun resumes from GEPA's saved state and proposes again, under the same index, a candidate accepted after
    that save: recording it now would record that index twice. A stop just after a save (before its callback) keeps
    the candidate the save holds."""
    saved = {"run_dir": str(tmp_path / "gepa"), "best_val": 0.5, "metric_calls": 10}
    writer = ResultsWriter(tmp_path / "paused")
    for event in (candidate(0), Event("state_saved", "t", saved), candidate(1),
                  Event("evaluation", "t", {"split": "val", "candidate_idx": 1, "scores": {"a": 1.0}}),
                  Event("iteration", "t", {}), Event("trial_paused", "t", {"saved_candidates": 1, "lm_usage": {}})):
        writer.handle(event)
    assert recorded(tmp_path / "paused" / "candidates") == [0]
    assert not (tmp_path / "paused" / "evaluations").exists()

    writer = ResultsWriter(tmp_path / "failed")
    for event in (candidate(0), Event("state_saved", "t", saved), candidate(1),
                  Event("trial_failed", "t", {"error": "KeyboardInterrupt: ", "saved_candidates": 2, "lm_usage": {}})):
        writer.handle(event)
    assert recorded(tmp_path / "failed" / "candidates") == [0, 1]


def test_a_paused_or_failed_process_records_its_lm_usage_under_its_segment(tmp_path: Path):
    """The requests were sent whatever became of the trial: a paused PBT segment (exploited away), a stopped process
    that a rerun resumes, a failed one; each adds its rows (a finished one too), and the trial's use is their sum."""
    usage = {"task": {"requests": 5, "prompt_tokens": 50}, "reflection": {"requests": 1, "prompt_tokens": 9}}
    for segment, event in [(0, Event("trial_failed", "t", {"error": "x", "saved_candidates": 0, "lm_usage": usage})),
                           (1, Event("trial_paused", "t", {"saved_candidates": 0, "lm_usage": usage}))]:
        ResultsWriter(tmp_path, segment=segment).handle(event)
    rows = [r for part in (tmp_path / "lm_usage").glob("*.parquet") for r in pq.read_table(part).to_pylist()]
    assert sorted((r["segment"], r["role"], r["requests"]) for r in rows) == [
        (0, "reflection", 1), (0, "task", 5), (1, "reflection", 1), (1, "task", 5)]
