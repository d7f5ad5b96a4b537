"""Compaction: a results table's many small Parquet parts (one per trial and GEPA iteration) become one file, so
queries open few files. The sweep driver compacts at the end of every sweep.

A reader never sees a row twice nor misses one:
- the compacted file is written under a hidden temp name (readers skip those), then renamed into place: one atomic
  step that shows all its rows at once;
- it lists in its Parquet metadata the part files it holds, each with its size and mtime; live_files() (what
  query.open_results reads) skips a part that a compacted file present holds, so between the rename and the removal
  of the parts a reader reads the compacted file and not the parts;
- the parts are removed last. A compaction stopped before that leaves them held (skipped); the next one removes
  them. A part written after a compaction (a resumed trial, even under a reused name) has another size or mtime:
  it is read;
- a reader whose listing loses a file to a compaction under way lists again.
A connection opened before a compaction names parts that are gone afterwards: open it again (its queries fail loudly
meanwhile, they never return wrong rows).

Only candidates, evaluations and lm_usage are compacted: their parts are written once, never rewritten. A trial's
row in trials is rewritten in place as the trial goes (running, then finished), and sweeps holds one file per sweep."""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from gepa_lab import atomic
from gepa_lab.errors import GepaLabError
from gepa_lab.results.schema import SCHEMAS

COMPACTED_TABLES = ("candidates", "evaluations", "lm_usage")
PREFIX = "_compacted-"
_HOLDS = b"gepa_lab.holds"  # metadata key: JSON {part file name: [size, mtime_ns]}
_RETRIES = 20
ROW_GROUP = 128 * 1024


class CompactionError(GepaLabError):
    """A part that does not fit its table's schema: the table is left as it is."""


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _held(compacted: list[Path]) -> dict[str, list[int]]:
    held: dict[str, list[int]] = {}
    for path in compacted:
        held.update(json.loads(pq.read_schema(path).metadata[_HOLDS]))
    return held


def _listing(folder: Path) -> tuple[list[Path], dict[str, list[int]], dict[str, list[int]]]:
    """(live files, stamps of the live files, parts held by the compacted files present)."""
    for _ in range(_RETRIES):
        files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
        try:
            held = _held([p for p in files if p.name.startswith(PREFIX)])
            stamps = {p.name: _stamp(p) for p in files}
        except FileNotFoundError:  # a compaction removed a file after we listed it: list again
            continue
        live = [p for p in files if held.get(p.name) != stamps[p.name]]
        return live, {p.name: stamps[p.name] for p in live}, held
    raise OSError(f"{folder}: files kept vanishing while listing it ({_RETRIES} tries)")


def live_files(folder: Path) -> list[Path]:
    """The Parquet files of a table folder that hold its rows: not temp files, not parts a compacted file holds."""
    return _listing(folder)[0] if folder.is_dir() else []


def _parts(live: list[Path], table: str) -> ds.Dataset:
    """The parts as one dataset in the table's current schema (columns a part predates read as null; an old type is
    cast: example_id was int64), read together rather than one file after another. A column the schema lacks is
    refused: the dataset would drop it silently."""
    schema = SCHEMAS[table]
    dataset = ds.dataset([str(p) for p in live], schema=schema, format="parquet")
    for fragment in dataset.get_fragments():
        unknown = sorted(set(fragment.physical_schema.names) - set(schema.names))
        if unknown:
            raise CompactionError(f"{fragment.path}: columns {', '.join(unknown)} are not in the {table} schema; {table} not compacted")
    return dataset


def compact_table(folder: Path, table: str) -> int:
    """Fold the table's live files into one compacted file; returns how many files it replaced (0: nothing to do)."""
    live, stamps, held = _listing(folder)
    leftovers = [folder / name for name in held if (folder / name).exists()]  # of a compaction stopped midway
    if len(live) < 2 and not leftovers:
        return 0
    # the new file holds what the compacted files it replaces held too, so leftovers stay hidden until removed
    holds = {**{name: held[name] for name in held if (folder / name).exists()}, **stamps}
    schema = SCHEMAS[table].with_metadata({_HOLDS: json.dumps(holds).encode()})
    parts = _parts(live, table)
    with atomic.atomic_path(folder / f"{PREFIX}{time.time_ns()}.parquet") as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            pending: list[pa.RecordBatch] = []
            rows = 0
            # streamed in the parts' order; written in row groups of ROW_GROUP rows, not one small group per part
            for batch in itertools.chain(parts.to_batches(), [None]):
                if batch is not None:
                    pending.append(batch)
                    rows += len(batch)
                if pending and (batch is None or rows >= ROW_GROUP):
                    writer.write_table(pa.Table.from_batches(pending).replace_schema_metadata(schema.metadata))
                    pending, rows = [], 0
    for path in [*leftovers, *live]:
        path.unlink(missing_ok=True)
    return len(live)


def compact(results_root: Path) -> dict[str, int]:
    """Compact every compactable table under results_root (OUTPUT_DIR/results); table -> files replaced."""
    return {table: compact_table(results_root / table, table)
            for table in COMPACTED_TABLES if (results_root / table).is_dir()}
