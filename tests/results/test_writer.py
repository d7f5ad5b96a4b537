"""gepa_lab.results.writer.ResultsWriter: when buffered rows reach disk."""
from pathlib import Path

import pyarrow.parquet as pq

from gepa_lab.events import Event
from gepa_lab.results.writer import ResultsWriter


def test_the_rows_a_saved_gepa_state_holds_are_written_when_gepa_saves_it(tmp_path: Path):
    """A run resumed from GEPA's state does not record the seed's val scores again, so they must be on disk by the time
    the state is: GEPA saves it before its first iteration, whose end is the next flush."""
    writer = ResultsWriter(tmp_path, sweep_id="s")
    writer.handle(Event("candidate", "t", {"candidate_idx": 0, "iteration": 0, "parents": [], "val_score": 0.5,
                                           "metric_calls": 10, "instructions": {"self": "seed"}}))
    writer.handle(Event("evaluation", "t", {"split": "val", "candidate_idx": 0, "scores": {"a": 1.0, "b": 0.0}}))
    assert not (tmp_path / "candidates").exists()  # buffered
    writer.handle(Event("state_saved", "t", {"run_dir": str(tmp_path / "gepa"), "best_val": 0.5, "metric_calls": 10}))
    [part] = (tmp_path / "candidates").iterdir()
    assert [(r["candidate_idx"], r["instruction"]) for r in pq.read_table(part).to_pylist()] == [(0, "seed")]
    assert len(pq.read_table(next((tmp_path / "evaluations").iterdir())).to_pylist()) == 2
