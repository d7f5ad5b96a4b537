"""gepa_lab.results.compact over real results folders: the same rows before and after, one file per compacted
table, and a reader that never sees a row twice nor misses one, also when a compaction stopped midway."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gepa_lab.results.compact import COMPACTED_TABLES, PREFIX, CompactionError, compact, live_files
from gepa_lab.results.query import TABLES, open_results
from results_data import write_trial
from test_examples import write_old_format


def all_rows(out: Path) -> dict[str, list[tuple]]:
    con = open_results(out)
    return {table: con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall() for table in TABLES}


def files(out: Path, table: str) -> list[str]:
    return sorted(p.name for p in (out / "results" / table).iterdir())


def test_compaction_keeps_every_row_in_one_file_per_table(sweep_dir: Path):
    before = all_rows(sweep_dir)
    trials_files = files(sweep_dir, "trials")
    parts = {table: len(files(sweep_dir, table)) for table in COMPACTED_TABLES}
    assert parts["evaluations"] > 10
    assert compact(sweep_dir / "results") == parts
    assert all_rows(sweep_dir) == before
    for table in COMPACTED_TABLES:
        [name] = files(sweep_dir, table)  # no part files, no temp files
        assert name.startswith(PREFIX)
        # the parts are read together and written in large row groups, not one small group per part
        assert pq.ParquetFile(sweep_dir / "results" / table / name).num_row_groups == 1
    assert files(sweep_dir, "trials") == trials_files  # rewritten as trials go: never compacted
    assert compact(sweep_dir / "results") == dict.fromkeys(COMPACTED_TABLES, 0)  # nothing more to do


def test_parts_written_after_a_compaction_are_read_and_folded_in_next_time(sweep_dir: Path):
    compact(sweep_dir / "results")
    # a resumed trial writes parts again, from sequence number 0: names the compacted file already held
    write_trial(sweep_dir, "t-a", [0.4, 0.5], [10, 40], params={"optimizer.seed": 0}, test=(0.3, 0.45))
    assert "t-a-00000.parquet" in files(sweep_dir, "evaluations")
    grown = all_rows(sweep_dir)
    assert len(grown["candidates"]) == 8 + 2
    compact(sweep_dir / "results")
    assert all_rows(sweep_dir) == grown
    assert len(files(sweep_dir, "candidates")) == 1


def test_a_compaction_stopped_before_removing_its_parts_shows_no_row_twice(sweep_dir: Path, tmp_path: Path):
    folder = sweep_dir / "results" / "evaluations"
    kept = tmp_path / "kept"
    shutil.copytree(folder, kept)  # copy2: the same size and mtime
    before = all_rows(sweep_dir)
    compact(sweep_dir / "results")
    for part in kept.iterdir():  # as if the compaction had stopped right after its rename
        shutil.copy2(part, folder / part.name)
    assert len(live_files(folder)) == 1
    assert all_rows(sweep_dir) == before
    compact(sweep_dir / "results")  # the next compaction removes the leftovers
    assert len(files(sweep_dir, "evaluations")) == 1 and all_rows(sweep_dir) == before


def test_an_old_format_folder_compacts_to_the_current_schema(tmp_path: Path):
    old = tmp_path / "old"
    (old / "results" / "evaluations").mkdir(parents=True)
    write_old_format(old)
    write_trial(old, "t-new", [0.4, 0.6], [10, 40])  # new parts beside the old ones: string ids, more columns
    before = all_rows(old)
    compact(old / "results")
    assert all_rows(old) == before
    assert len(files(old, "evaluations")) == 1
    assert open_results(old).execute("SELECT DISTINCT segment FROM evaluations").fetchall() == [(0,)]


def test_a_part_that_does_not_fit_the_schema_leaves_the_table_as_it_was(sweep_dir: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = sweep_dir / "results" / "lm_usage"
    pq.write_table(pa.table({"trial_id": ["x"], "surprise": [1]}), folder / "x-00000.parquet")
    names = files(sweep_dir, "lm_usage")
    with pytest.raises(CompactionError, match="surprise"):
        compact(sweep_dir / "results")
    assert files(sweep_dir, "lm_usage") == names
