"""Query results with DuckDB: one view per table over the Parquet files of one or many output dirs.

    from gepa_lab.results.query import open_results, leaderboard, best_trial
    con = open_results("outputs/sweep-demo-20261126-101500")
    print(leaderboard(con).rows)
    con.sql("SELECT trial_id, max(val_score) FROM candidates GROUP BY ALL").show()

Every view (sweeps, trials, candidates, evaluations, lm_usage) has the columns of
gepa_lab/results/schema.py plus `output_dir` (the folder the row came from, so runs that share a
trial id -- every `gepa_lab.run` is trial "run" -- stay apart). A table with no files yet is an
empty view with those columns, so queries never fail for want of data.

The views list the files present when they were opened (a sweep still running keeps adding files):
call open_results again to see new ones. Temp files of writes in progress (".NAME.tmp.parquet") are
never read, nor are the parts that a compacted file replaced (gepa_lab.results.compact). Results written before
evaluations.example_id became the corpus id (an int64 index in the split) read as strings like the new ones; those
written before the `segment` column read it as 0 (schema.DEFAULTS).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import duckdb
import pyarrow as pa

from gepa_lab.errors import GepaLabError
from gepa_lab.paths import OUTPUTS_DIR
from gepa_lab.progress import with_interval
from gepa_lab.results.compact import live_files
from gepa_lab.results.schema import DEFAULTS, SCHEMAS
from gepa_lab.results.stats import bootstrap_ci, paired_bootstrap_ci

TABLES = tuple(SCHEMAS)
# A trial is identified by these columns (trial ids repeat across output dirs).
TRIAL_KEY = ("output_dir", "sweep_id", "trial_id")
# Config keys that say where a trial goes or how it is watched: never a "parameter" of the leaderboard.
_NOT_PARAMS = ("output_dir", "tracking.")


class ResultsError(GepaLabError):
    """A results folder that holds no results, or a query DuckDB rejects."""


@dataclass
class Result:
    """The rows of a query, with their column names (kept even when there are no rows)."""

    columns: list[str]
    rows: list[tuple]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)


# ---------------------------------------------------------------------------------------- opening


def results_root(output_dir: str | Path) -> Path | None:
    """Where an output dir keeps its tables: DIR/results, or DIR itself when DIR is a results folder."""
    d = Path(output_dir)
    if (d / "results").is_dir() and any((d / "results" / t).is_dir() for t in TABLES):
        return d / "results"
    if any((d / t).is_dir() for t in TABLES) and d.name == "results":
        return d
    return None


def parquet_files(root: Path, table: str) -> list[Path]:
    """The finished Parquet files of one table (atomic writes use hidden temp names: skipped; so are parts that a
    compacted file holds: gepa_lab.results.compact)."""
    return live_files(root / table)


def newest_output_dir(outputs: str | Path = OUTPUTS_DIR) -> Path:
    """The most recently modified folder under outputs/ (the default of the CLI)."""
    outputs = Path(outputs)
    folders = [p for p in outputs.iterdir() if p.is_dir() and not p.name.startswith(".")] if outputs.is_dir() else []
    if not folders:
        raise ResultsError(f"no output folders under {outputs}; pass a results folder (DIR)")
    return max(folders, key=lambda p: p.stat().st_mtime)


def _sql_str(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return f"{_duckdb_type(t.value_type)}[]"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    for check, name in ((pa.types.is_string, "VARCHAR"), (pa.types.is_int64, "BIGINT"),
                        (pa.types.is_float64, "DOUBLE"), (pa.types.is_boolean, "BOOLEAN")):
        if check(t):
            return name
    raise TypeError(f"no DuckDB type for {t}")


def _empty_select(table: str) -> str:
    """SELECT with the table's schema columns and DuckDB types, and no rows."""
    cols = ", ".join(f"CAST(NULL AS {_duckdb_type(f.type)}) AS {f.name}" for f in SCHEMAS[table])
    return f"SELECT {cols}, CAST(NULL AS VARCHAR) AS output_dir WHERE false"


def open_results(
    *dirs: str | Path, con: duckdb.DuckDBPyConnection | None = None, strict: bool = True
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (in memory unless `con` is given) with a view per results table over
    `read_parquet([...], union_by_name=true)` of every given output dir that has that table.

    strict: a dir without results raises ResultsError (otherwise it is skipped)."""
    if not dirs:
        raise ResultsError("no results folder given")
    roots: list[tuple[str, Path]] = []
    for d in dirs:
        root = results_root(d)
        if root is None:
            if strict:
                why = "does not exist" if not Path(d).exists() else "holds no results (no results/TABLE/*.parquet)"
                raise ResultsError(f"{d} {why}")
            continue
        roots.append((str(root.parent.resolve()), root))
    con = con or duckdb.connect()
    for table in TABLES:
        parts = [_empty_select(table)]
        for label, root in roots:
            files = parquet_files(root, table)
            if files:
                listing = ", ".join(_sql_str(f) for f in files)
                parts.append(
                    f"SELECT *, {_sql_str(label)} AS output_dir FROM read_parquet([{listing}], union_by_name=true)"
                )
        # The empty typed SELECT comes first: every schema column exists, in schema order, with its type.
        union = " UNION ALL BY NAME ".join(parts)
        defaults = ", ".join(f"coalesce({column}, {value}) AS {column}"
                             for column, value in DEFAULTS.get(table, {}).items())
        con.execute(f"CREATE OR REPLACE VIEW {table} AS "
                    + (f"SELECT * REPLACE ({defaults}) FROM ({union})" if defaults else union))
    return con


def connect(dirs: Iterable[str | Path], strict: bool = True) -> duckdb.DuckDBPyConnection:
    """open_results over a list of output dirs."""
    return open_results(*dirs, strict=strict)


# ---------------------------------------------------------------------------------------- queries


def sql(con: duckdb.DuckDBPyConnection, query: str) -> Result:
    """Run SQL; a query DuckDB rejects raises ResultsError with DuckDB's message on one line."""
    query = QUERIES[query][1] if query in QUERIES else query
    try:
        cursor = con.execute(query)
        columns = [d[0] for d in cursor.description] if cursor.description else []
        rows = cursor.fetchall() if cursor.description else []
    except duckdb.Error as e:
        message = " ".join(str(e).split())
        raise ResultsError(f"bad SQL: {message}") from None
    return Result(columns, rows)


# Ties on val go to the trial that spent fewer metric calls; then the trial id, for a stable order.
# Test scores never break ties: choosing on test would leak it.
_ORDER = "best_val_score DESC NULLS LAST, metric_calls ASC NULLS LAST, trial_id ASC, output_dir ASC"

LEADERBOARD_SQL = f"""
SELECT row_number() OVER (ORDER BY {_ORDER}) AS rank,
       trial_id, task, status, best_val_score, best_test_score, best_test_ci95_low, best_test_ci95_high,
       best_val_score - best_test_score AS val_test_gap,
       seed_val_score, seed_test_score, seed_test_ci95_low, seed_test_ci95_high,
       best_val_score - seed_val_score AS val_gain,
       best_test_score - seed_test_score AS test_gain, test_gain_ci95_low, test_gain_ci95_high,
       metric_calls, num_candidates, lm_calls, wall_seconds, sweep_id, output_dir, config_json
FROM trials
ORDER BY {_ORDER}
"""

# Named queries: `python -m gepa_lab.results DIR --sql NAME` runs one by its name.
QUERIES: dict[str, tuple[str, str]] = {
    "leaderboard": ("every trial, best val first (ties: fewer metric calls)", LEADERBOARD_SQL),
    "status": (
        "trials per status",
        "SELECT status, count(*) AS trials FROM trials GROUP BY status ORDER BY trials DESC",
    ),
    "progress": (
        "each candidate GEPA scored on val, with the trial's best val so far, by metric calls",
        """SELECT trial_id, candidate_idx, iteration, metric_calls, val_score,
                  max(val_score) OVER (PARTITION BY output_dir, sweep_id, trial_id
                                       ORDER BY metric_calls, candidate_idx) AS best_val_so_far
           FROM candidates ORDER BY output_dir, trial_id, metric_calls, candidate_idx""",
    ),
    "winners": (
        "the instruction of each trial's winning candidate",
        # the winner of a trial's last segment; one a PBT segment inherited is read where it was first made (lineage)
        """SELECT t.trial_id, t.best_val_score, t.best_test_score, t.best_candidate_idx, c.instruction
           FROM trials t
           LEFT JOIN lineage l ON l.output_dir = t.output_dir AND l.sweep_id = t.sweep_id AND l.trial_id = t.trial_id
            AND l.segment = t.segment AND l.candidate_idx = t.best_candidate_idx
           JOIN candidates c ON c.output_dir = t.output_dir AND c.sweep_id = t.sweep_id
            AND c.trial_id = coalesce(l.origin_trial_id, t.trial_id) AND c.segment = coalesce(l.origin_segment, t.segment)
            AND c.candidate_idx = coalesce(l.origin_candidate_idx, t.best_candidate_idx)
           ORDER BY t.best_val_score DESC NULLS LAST, t.metric_calls""",
    ),
    "changed": (
        "test examples whose score the winner changed from the seed's (fixed: +, broken: -)",
        """SELECT t.trial_id, w.example_id, s.score AS seed_score, w.score AS winner_score,
                  w.score - s.score AS delta
           FROM trials t
           JOIN evaluations w ON w.output_dir = t.output_dir AND w.sweep_id = t.sweep_id AND w.trial_id = t.trial_id
            AND w.segment = t.segment AND w.split = 'test' AND w.candidate_idx = t.best_candidate_idx
           JOIN evaluations s ON s.output_dir = t.output_dir AND s.sweep_id = t.sweep_id AND s.trial_id = t.trial_id
            AND s.segment = t.segment AND s.split = 'test' AND s.candidate_idx = 0 AND s.example_id = w.example_id
           WHERE t.best_candidate_idx <> 0 AND w.score <> s.score
           ORDER BY t.trial_id, delta DESC, w.example_id""",
    ),
    "usage": (
        "LM requests, tokens, latency and cost per trial, segment and role (task | reflection); a row per process that ran it",
        """SELECT trial_id, segment, role, requests, cache_hits, errors, retries, prompt_tokens, completion_tokens,
                  latency_p50_s, latency_p95_s, cost_usd
           FROM lm_usage ORDER BY output_dir, trial_id, segment, role""",
    ),
    "failures": (
        "failed trials and their errors",
        "SELECT trial_id, started_at, ended_at, error FROM trials WHERE status = 'failed' ORDER BY ended_at",
    ),
}


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def varying_params(configs: Iterable[str | None]) -> dict[int, dict[str, Any]]:
    """Index -> {dotted config key: value} of the swept parameters: the keys of each config's
    `params` (a sweep trial records its sampled values there) and every config key whose value
    differs across the configs. Where a trial goes (output_dir) and tracking are not parameters."""
    parsed = {i: json.loads(c) for i, c in enumerate(configs) if c}
    flat = {i: _leaves({k: v for k, v in cfg.items() if k != "params"}) for i, cfg in parsed.items()}
    swept = {k for cfg in parsed.values() for k in (cfg.get("params") or {})}
    keys = sorted({k for leaves in flat.values() for k in leaves if not k.startswith(_NOT_PARAMS)})
    varying = {
        k for k in keys if len({json.dumps(leaves.get(k), sort_keys=True) for leaves in flat.values()}) > 1
    }
    shown = sorted(swept | varying)
    return {
        i: {k: (parsed[i].get("params") or {}).get(k, flat[i].get(k)) for k in shown} for i in flat
    }


def by_task(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows (in their order) split per task, tasks in name order; rows without a task (skipped trials) last."""
    tasks = sorted({r["task"] for r in rows if r["task"] is not None})
    return [[r for r in rows if r["task"] == t] for t in tasks] + [[r for r in rows if r["task"] is None]]


def leaderboard(con: duckdb.DuckDBPyConnection, limit: int | None = 20) -> Result:
    """Trials ranked by best val score (ties: fewer metric calls), with the config keys that vary
    across them as extra columns; `output_dir` only when several output dirs are open. Trials of several tasks are
    ranked within their task (scores of different tasks say nothing of each other): a `task` column, the tasks one
    after another, each with its own ranks, and `limit` rows per task."""
    rows = sql(con, LEADERBOARD_SQL).dicts()
    several_tasks = len({r["task"] for r in rows if r["task"] is not None}) > 1
    if several_tasks:
        groups = [group for group in by_task(rows) if group]
        rows = [{**r, "rank": i} for group in groups for i, r in enumerate(group[:limit] if limit else group, 1)]
        # the keys that vary within a task: the task's own keys (corpus, instruction, ...) go with the task column
        params, offset = {}, 0
        for group in groups:
            shown = group[:limit] if limit else group
            params.update({offset + i: p for i, p in varying_params(r["config_json"] for r in shown).items()})
            offset += len(shown)
        limit = None
    else:
        params = varying_params(r["config_json"] for r in rows)
    param_cols = sorted({k for p in params.values() for k in p})
    several_dirs = len({r["output_dir"] for r in rows}) > 1
    base = ["rank", *(["task"] if several_tasks else []), "trial_id", "status", *param_cols, "best_val_score", "best_test_score", "best_test_ci95_low",
            "best_test_ci95_high", "val_test_gap", "seed_val_score", "seed_test_score", "seed_test_ci95_low",
            "seed_test_ci95_high", "val_gain", "test_gain", "test_gain_ci95_low", "test_gain_ci95_high",
            "metric_calls", "num_candidates", "lm_calls", "wall_seconds"]
    if several_dirs:
        base.append("output_dir")
    shown = rows[:limit] if limit is not None else rows
    out_rows = []
    for i, r in enumerate(shown):
        merged = {**r, **{k: params.get(i, {}).get(k) for k in param_cols}}
        out_rows.append(tuple(merged.get(c) for c in base))
    return Result(base, out_rows)


def leaderboard_table(con: duckdb.DuckDBPyConnection, limit: int | None = 20, title: str | None = "leaderboard"):
    """The leaderboard as a rich Table (short headers: 'best val', 'seed' for optimizer.seed; each score with its
    95% interval in brackets)."""
    board = fold_intervals(leaderboard(con, limit=limit))
    return rich_table(board, title=title, headers=short_headers(board.columns), caption=INTERVAL_CAPTION)


def best_trial(con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The trial with the best val score (ties: fewer metric calls), as a dict of its trials row
    with `config` parsed; None when no trial has a score yet."""
    found = sql(
        con,
        f"SELECT * FROM trials WHERE best_val_score IS NOT NULL ORDER BY {_ORDER} LIMIT 1",
    ).dicts()
    if not found:
        return None
    row = found[0]
    row["config"] = json.loads(row["config_json"]) if row.get("config_json") else None
    return row


def best_trials(con: duckdb.DuckDBPyConnection) -> dict[str | None, dict[str, Any]]:
    """task -> its best trial (best_trial's order within the task), tasks in name order: scores of different tasks
    are never compared, so a sweep over several tasks has a winner per task."""
    found = sql(con, f"""SELECT * FROM trials WHERE best_val_score IS NOT NULL
                         QUALIFY row_number() OVER (PARTITION BY task ORDER BY {_ORDER}) = 1
                         ORDER BY task NULLS LAST""").dicts()
    for row in found:
        row["config"] = json.loads(row["config_json"]) if row.get("config_json") else None
    return {row["task"]: row for row in found}


def trial_progress(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    """(output_dir, sweep_id, trial_id) -> [(metric_calls, best val so far), ...] in metric-call order,
    one point per candidate GEPA scored on val (the seed first)."""
    rows = sql(
        con,
        """SELECT output_dir, sweep_id, trial_id, metric_calls,
                  max(val_score) OVER (PARTITION BY output_dir, sweep_id, trial_id
                                       ORDER BY metric_calls, candidate_idx) AS best
           FROM candidates WHERE val_score IS NOT NULL
           ORDER BY output_dir, sweep_id, trial_id, metric_calls, candidate_idx""",
    ).rows
    curves: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for output_dir, sweep_id, trial_id, calls, best in rows:
        curves.setdefault((output_dir or "", sweep_id or "", trial_id), []).append((int(calls or 0), float(best)))
    return curves


# ---------------------------------------------------------------------------------------- effects

EFFECTS_METHOD = (
    "Each value's test score is the mean over the test examples of the example's score averaged over the trials "
    "with that value (their winners); its 95% interval is a percentile bootstrap over the test examples. It says how "
    "much the choice of test examples could move the score, not how much another run (another seed) could: "
    "`trials` and the trials' lowest and highest test scores show that spread. vs_best: the value's score minus "
    "the key's best value's, with a paired bootstrap interval over the examples both were scored on."
)


def _value_order(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, json.dumps(value, sort_keys=True))


def _example_means(trials: list[dict[str, Any]]) -> dict[Any, float]:
    """example id -> its test score averaged over the trials that scored it."""
    scores: dict[Any, list[float]] = {}
    for trial in trials:
        for example_id, score in trial["scores"].items():
            scores.setdefault(example_id, []).append(score)
    return {example_id: sum(s) / len(s) for example_id, s in scores.items()}


def effects(con: duckdb.DuckDBPyConnection) -> Result:
    """For each swept key (the leaderboard's parameter columns) and each of its values: the finished trials with that
    value, their test score with a 95% interval, how far below the key's best value it is (paired interval), the
    trials' lowest and highest test scores and their mean val score. EFFECTS_METHOD says how the intervals are made."""
    rows = sql(con, """
        SELECT t.output_dir, t.sweep_id, t.trial_id, any_value(t.config_json) AS config_json,
               any_value(t.best_val_score) AS val_score, any_value(t.best_test_score) AS test_score,
               e.example_id, avg(e.score) AS score
        FROM trials t JOIN evaluations e
          ON e.output_dir = t.output_dir AND e.sweep_id = t.sweep_id AND e.trial_id = t.trial_id
         AND e.segment = t.segment AND e.split = 'test' AND e.candidate_idx = t.best_candidate_idx
        WHERE t.best_test_score IS NOT NULL AND e.score IS NOT NULL
        GROUP BY t.output_dir, t.sweep_id, t.trial_id, e.example_id
        ORDER BY t.output_dir, t.sweep_id, t.trial_id""").dicts()  # trials in a stable order: sums in a stable order
    trials: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        trial = trials.setdefault((r["output_dir"], r["sweep_id"], r["trial_id"]), {**r, "scores": {}})
        trial["scores"][r["example_id"]] = r["score"]
    scored = list(trials.values())
    params = varying_params(t["config_json"] for t in scored)
    columns = ["key", "value", "trials", "test_score", "test_ci95_low", "test_ci95_high", "vs_best", "vs_best_ci95_low",
               "vs_best_ci95_high", "trial_test_min", "trial_test_max", "val_score"]
    out: list[tuple] = []
    for key in sorted({k for p in params.values() for k in p}):
        groups: dict[str, list[dict[str, Any]]] = {}
        for i, trial in enumerate(scored):
            groups.setdefault(json.dumps(params.get(i, {}).get(key), sort_keys=True), []).append(trial)
        means = {value: _example_means(group) for value, group in groups.items()}
        mean_score = {value: sum(m.values()) / len(m) for value, m in means.items()}
        best = max(mean_score, key=mean_score.get)
        for value in sorted(groups, key=lambda v: _value_order(json.loads(v))):
            group, examples = groups[value], means[value]
            # sorted scores (pairs): the bootstrap resamples positions, and the interval must not hang on how ids sort
            low, high = bootstrap_ci(sorted(examples.values()))
            pairs = sorted((means[best][e], score) for e, score in examples.items() if e in means[best])
            vs_best = vs_low = vs_high = None
            if value != best and pairs:
                theirs, ours = zip(*pairs)
                vs_best = (sum(ours) - sum(theirs)) / len(pairs)
                vs_low, vs_high = paired_bootstrap_ci(theirs, ours)
            tests = [t["test_score"] for t in group]
            out.append((key, json.loads(value), len(group), mean_score[value], low, high, vs_best, vs_low, vs_high,
                        min(tests), max(tests), sum(t["val_score"] for t in group) / len(group)))
    return Result(columns, out)


# ---------------------------------------------------------------------------------------- LMs per task

LMS_METHOD = (
    "Per task, each task LM (the trials' `lm` config; named by the keys that differ between them) is represented by its "
    "best trial on val, and scored by that trial's winner on test with its 95% interval. vs_winner: its test score minus "
    "that of the task's winner (the best trial on val of any LM), with a paired bootstrap interval over the test "
    "examples both were scored on: an interval that includes 0 does not tell the two LMs apart on this test set."
)

_TEST_SCORES_SQL = """
SELECT example_id, avg(score) AS score FROM evaluations
WHERE output_dir = ? AND sweep_id IS NOT DISTINCT FROM ? AND trial_id = ? AND segment = ? AND split = 'test'
  AND candidate_idx = ? AND score IS NOT NULL
GROUP BY example_id
"""


def _test_scores(con: duckdb.DuckDBPyConnection, row: dict[str, Any]) -> dict[str, float]:
    key = [row["output_dir"], row["sweep_id"], row["trial_id"], row["segment"], row["best_candidate_idx"]]
    return dict(con.execute(_TEST_SCORES_SQL, key).fetchall())


def lm_comparison(con: duckdb.DuckDBPyConnection) -> Result:
    """For each task run with more than one task LM: one row per LM (its best trial on val), its test score with its
    interval, and its paired test-score difference to the task's winner (LMS_METHOD)."""
    rows = sql(con, f"SELECT * FROM trials WHERE best_val_score IS NOT NULL ORDER BY task, {_ORDER}").dicts()
    columns = ["task", "lm", "trials", "trial_id", "best_val_score", "best_test_score", "best_test_ci95_low",
               "best_test_ci95_high", "vs_winner", "vs_winner_ci95_low", "vs_winner_ci95_high"]
    out: list[tuple] = []
    for group in by_task(rows):
        per_lm: dict[str, list[dict[str, Any]]] = {}
        lms: dict[str, dict[str, Any]] = {}
        for r in group:  # best val first: each LM's first row is its best trial
            lm = (json.loads(r["config_json"] or "{}")).get("lm") or {}
            key = json.dumps(lm, sort_keys=True)
            per_lm.setdefault(key, []).append(r)
            lms[key] = _leaves(lm)
        if len(per_lm) < 2:
            continue
        differ = sorted(k for k in set().union(*lms.values()) if len({json.dumps(v.get(k)) for v in lms.values()}) > 1)
        winner = next(iter(per_lm.values()))[0]
        theirs = _test_scores(con, winner)
        for key, trials in per_lm.items():
            best = trials[0]
            name = ", ".join(f"lm.{k}={lms[key].get(k)}" for k in differ)
            vs = vs_low = vs_high = None
            if best is not winner:
                ours = _test_scores(con, best)
                # sorted by example id: the bootstrap resamples positions of aligned pairs
                pairs = [(theirs[e], ours[e]) for e in sorted(ours) if e in theirs]
                if pairs:
                    a, b = zip(*pairs)
                    vs = (sum(b) - sum(a)) / len(pairs)
                    vs_low, vs_high = paired_bootstrap_ci(a, b)
            out.append((best["task"], name, len(trials), best["trial_id"], best["best_val_score"], best["best_test_score"],
                        best["best_test_ci95_low"], best["best_test_ci95_high"], vs, vs_low, vs_high))
    return Result(columns, out)


# ---------------------------------------------------------------------------------------- examples

# One trial's test examples, the winner against the seed (candidate 0): 'fixed' (the winner scores higher),
# 'broken' (lower), 'wrong' (no change, below the perfect score), both scored in the trial's (last) segment.
# Parameters: output_dir, sweep_id, trial_id, segment, the winner's candidate_idx, the perfect score.
EXAMPLES_SQL = """
SELECT CASE WHEN w.score > s.score THEN 'fixed' WHEN w.score < s.score THEN 'broken' ELSE 'wrong' END AS outcome,
       w.example_id, s.score AS seed_score, w.score AS winner_score,
       s.prediction AS seed_prediction, w.prediction AS winner_prediction, w.feedback
FROM evaluations w LEFT JOIN evaluations s
  ON s.output_dir = w.output_dir AND s.sweep_id = w.sweep_id AND s.trial_id = w.trial_id AND s.segment = w.segment
 AND s.split = 'test' AND s.candidate_idx = 0 AND s.example_id = w.example_id
WHERE w.output_dir = ? AND w.sweep_id = ? AND w.trial_id = ? AND w.segment = ? AND w.split = 'test'
  AND w.candidate_idx = ? AND (w.score <> s.score OR w.score < ?)
ORDER BY CASE outcome WHEN 'fixed' THEN 0 WHEN 'broken' THEN 1 ELSE 2 END, w.example_id
"""
OUTCOMES = ("fixed", "broken", "wrong")


@dataclass
class ExampleChanges:
    """What a trial's winner fixed, broke and still gets wrong on test, versus the seed program."""

    trial: dict[str, Any]  # the trials row
    counts: dict[str, int]  # outcome -> examples
    result: Result  # at most `limit` rows per outcome
    inputs_note: str | None  # why the inputs column is empty, if it is


def _trial_row(con: duckdb.DuckDBPyConnection, trial_id: str | None) -> dict[str, Any]:
    if trial_id is None:
        row = best_trial(con)
        if row is None:
            raise ResultsError("no finished trial with scores yet")
        return row
    found = sql(con, f"SELECT * FROM trials WHERE trial_id = {_sql_str(trial_id)} AND best_candidate_idx IS NOT NULL").dicts()
    if not found:
        known = ", ".join(sql(con, "SELECT DISTINCT trial_id FROM trials ORDER BY 1").column("trial_id"))
        raise ResultsError(f"no finished trial '{trial_id}' (trials: {known or 'none'})")
    row = found[0]
    row["config"] = json.loads(row["config_json"]) if row.get("config_json") else None
    return row


def corpus_inputs(config: dict[str, Any] | None, manifest_hash: str | None, split: str) -> tuple[dict[str, str], str | None]:
    """example id -> JSON of its input columns, read from the trial's prepared corpus if it is still the one the
    trial used (same manifest hash); else {} and why."""
    from gepa_lab.corpus import CorpusError, corpus_dir, read_manifest, read_split

    name = ((config or {}).get("corpus") or {}).get("name")
    if not name:
        return {}, "inputs: the trial's config names no corpus"
    try:
        manifest = read_manifest(folder := corpus_dir(name))
    except CorpusError:
        return {}, f"inputs: corpus '{name}' is not prepared here"
    if manifest["manifest_hash"] != manifest_hash:
        return {}, f"inputs: corpus '{name}' changed since the trial ran"
    inputs = list(manifest["inputs"])
    rows = read_split(folder, split)
    return {row["id"]: json.dumps({k: row[k] for k in inputs}, ensure_ascii=False, default=str) for row in rows}, None


def example_changes(con: duckdb.DuckDBPyConnection, trial_id: str | None = None, limit: int | None = 20) -> ExampleChanges:
    """The test examples that the trial's winner (the best trial's by default) fixed or broke versus the seed, and
    those it still gets wrong (below optimizer.perfect_score), with predictions, the winner's feedback and the inputs."""
    trial = _trial_row(con, trial_id)
    perfect = float(((trial.get("config") or {}).get("optimizer") or {}).get("perfect_score", 1.0))
    key = [trial["output_dir"], trial["sweep_id"], trial["trial_id"], trial["segment"], trial["best_candidate_idx"],
           perfect]
    try:
        rows = con.execute(EXAMPLES_SQL, key).fetchall()
    except duckdb.Error as e:
        raise ResultsError(" ".join(str(e).split())) from None
    inputs, note = corpus_inputs(trial.get("config"), trial.get("corpus_manifest_hash"), "test") if rows else ({}, None)
    counts = {o: sum(r[0] == o for r in rows) for o in OUTCOMES}
    shown, seen = [], dict.fromkeys(OUTCOMES, 0)
    for outcome, example_id, *rest in rows:
        seen[outcome] += 1
        if limit is None or seen[outcome] <= limit:
            seed_score, winner_score, *texts = rest
            shown.append((outcome, example_id, seed_score, winner_score, inputs.get(example_id), *texts))
    columns = ["outcome", "example_id", "seed_score", "winner_score", "inputs", "seed_prediction", "winner_prediction",
               "feedback"]
    return ExampleChanges(trial, counts, Result(columns, shown), note)


# ---------------------------------------------------------------------------------------- display

INTERVAL_CAPTION = "[low, high]: 95% bootstrap interval over the test examples (gains: paired, the same examples for both)"


def fold_intervals(result: Result) -> Result:
    """For display: each column X that has X_ci95_low and X_ci95_high columns (the _score suffix dropped: best_test_score
    -> best_test_ci95_low) becomes one text cell '0.550 [0.400, 0.700]' (gains signed), and the bound columns go."""
    folded: dict[str, tuple[int, int]] = {}
    for column in result.columns:
        stem = column.removesuffix("_score")
        if f"{stem}_ci95_low" in result.columns and f"{stem}_ci95_high" in result.columns:
            folded[column] = (result.columns.index(f"{stem}_ci95_low"), result.columns.index(f"{stem}_ci95_high"))
    bounds = {i for pair in folded.values() for i in pair}
    keep = [i for i in range(len(result.columns)) if i not in bounds]

    def shown(row: tuple, i: int) -> Any:
        column = result.columns[i]
        if column not in folded:
            return row[i]
        low, high = folded[column]
        return with_interval(row[i], (row[low], row[high]), signed=not column.endswith("_score"))

    return Result([result.columns[i] for i in keep], [tuple(shown(row, i) for i in keep) for row in result.rows])


_HEADERS = {
    "best_val_score": "best val", "best_test_score": "best test", "seed_val_score": "seed val",
    "seed_test_score": "seed test", "val_gain": "val gain", "metric_calls": "metric calls",
    "num_candidates": "candidates", "lm_calls": "LM calls", "wall_seconds": "wall s", "output_dir": "output dir",
    "trial_id": "trial", "val_test_gap": "val-test gap", "test_gain": "test gain", "test_score": "test",
    "vs_best": "vs best", "vs_winner": "vs winner", "trial_test_min": "trial min", "trial_test_max": "trial max", "val_score": "val",
}


def short_headers(columns: list[str]) -> list[str]:
    """Table headers for the leaderboard: 'best val' for best_val_score, 'seed' for optimizer.seed
    (the full dotted key where two parameters share a last part)."""
    last = [c.rsplit(".", 1)[-1] for c in columns]
    return [_HEADERS.get(c, c if "." in c and last.count(short) > 1 else short) for c, short in zip(columns, last)]


def cell(value: Any) -> str:
    """A value as a table cell: floats to 4 decimals (1 from 10 up), timestamps to the second."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def rich_table(result: Result, title: str | None = None, headers: list[str] | None = None, caption: str | None = None):
    from rich.markup import escape
    from rich.table import Table

    # escaped: data and captions may hold brackets ('[0.4, 0.7]') that rich would read as markup
    table = Table(title=title, title_justify="left", caption=escape(caption or ""), caption_justify="left")
    for column in headers or result.columns:
        table.add_column(column, overflow="fold")
    for row in result.rows:
        table.add_row(*(escape(cell(v)) for v in row))
    return table
