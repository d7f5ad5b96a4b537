"""Are two results folders the same, trial for trial? `python -m gepa_lab.results diff DIR_A DIR_B`.

Trials are matched by their parameters (the `params` a sweep recorded in each trial's config; a run has none), the
k-th trial of a parameter set in A with the k-th in B, by trial id. Matched trials are compared on what they found,
never on when or how fast: status, seed and best scores, the winner's index, candidates, metric calls, GEPA's
iterations and stop reason, the user code errors counted; each candidate's iteration, parents, val score, metric
calls and instructions; each evaluation's score, prediction and feedback (per split, candidate and example). A PBT
trial's candidates are told apart by their segment too (candidate indices restart with each segment's GEPA state).
The first difference is reported: trials in the order of their parameters, then segment and candidate, then split
(val first) and example."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from gepa_lab.results.query import open_results

TRIAL_FIELDS = ("status", "seed_val_score", "seed_test_score", "best_val_score", "best_test_score",
                "best_candidate_idx", "num_candidates", "metric_calls", "iterations", "gepa_stop_reason",
                "user_code_errors")
CANDIDATE_FIELDS = ("iteration", "parents", "val_score", "metric_calls", "instructions_json")
EVALUATION_FIELDS = ("score", "prediction", "feedback")
SIDES = ("a", "b")


@dataclass
class Diff:
    """The outcome: identical, or the first difference (`first`, with `details` lines under it)."""

    trials: int = 0
    candidates: int = 0
    evaluations: int = 0
    first: str | None = None
    details: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.first is None

    def lines(self) -> list[str]:
        if self.identical:
            return [f"identical: {self.trials} trials matched by their parameters ({self.candidates} candidates, "
                    f"{self.evaluations} evaluations)"]
        return [f"different: {self.first}", *(f"  {line}" for line in self.details)]


def _params_key(config_json: str | None) -> str:
    params = (json.loads(config_json) if config_json else {}).get("params") or {}
    return json.dumps(params, sort_keys=True)


def _params_shown(key: str) -> str:
    params = json.loads(key)
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items())) or "(no parameters)"


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _copy_tables(con: duckdb.DuckDBPyConnection, side: str, folder: str | Path) -> None:
    open_results(folder, con=con)  # (re)creates the views over this folder's files
    for table in ("trials", "candidates", "evaluations"):
        con.execute(f"CREATE TABLE {side}_{table} AS SELECT * FROM {table}")


def _pairs(con: duckdb.DuckDBPyConnection) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Matched trials in report order (each: ord, key, and each side's row), and the unmatched ones by side."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for side in SIDES:
        cur = con.execute(f"SELECT sweep_id, trial_id, config_json, {', '.join(TRIAL_FIELDS)} FROM {side}_trials "
                          "ORDER BY trial_id, sweep_id")
        names = [d[0] for d in cur.description]
        for row in cur.fetchall():
            record = dict(zip(names, row))
            groups.setdefault(_params_key(record["config_json"]), {"a": [], "b": []})[side].append(record)
    pairs, unmatched = [], {"a": [], "b": []}
    for key in sorted(groups):
        a, b = groups[key]["a"], groups[key]["b"]
        for k in range(max(len(a), len(b))):
            if k < len(a) and k < len(b):
                pairs.append({"ord": len(pairs), "key": key, "a": a[k], "b": b[k]})
            else:
                (unmatched["a"] if k < len(a) else unmatched["b"]).append({"key": key, **(a[k] if k < len(a) else b[k])})
    return pairs, unmatched


def _first_row_difference(con: duckdb.DuckDBPyConnection, table: str, keys: tuple[str, ...], fields: tuple[str, ...],
                          order: str) -> dict[str, Any] | None:
    """The first (by `order`) row of `table` whose `fields` differ between A and B, or that only one side has, among
    the matched trials: {ord, keys..., a_FIELD, b_FIELD..., only} or None."""
    side_rows = {side: f"""SELECT DISTINCT p.ord, {', '.join(f't.{c}' for c in keys + fields)} FROM pairs p
                          JOIN {side}_{table} t ON t.sweep_id = p.{side}_sweep AND t.trial_id = p.{side}_trial"""
                 for side in SIDES}
    on = " AND ".join(f"a.{c} = b.{c}" for c in ("ord", *keys))
    differs = " OR ".join(["a.ord IS NULL", "b.ord IS NULL", *(f"a.{c} IS DISTINCT FROM b.{c}" for c in fields)])
    cur = con.execute(f"""
        WITH a AS ({side_rows['a']}), b AS ({side_rows['b']})
        SELECT * FROM (
            SELECT coalesce(a.ord, b.ord) AS ord, {', '.join(f'coalesce(a.{c}, b.{c}) AS {c}' for c in keys)},
                   {', '.join(f'a.{c} AS a_{c}, b.{c} AS b_{c}' for c in fields)},
                   CASE WHEN a.ord IS NULL THEN 'B' WHEN b.ord IS NULL THEN 'A' END AS only
            FROM a FULL OUTER JOIN b ON {on} WHERE {differs})
        ORDER BY {order} LIMIT 1""")
    row = cur.fetchone()
    return dict(zip([d[0] for d in cur.description], row)) if row else None


def _changed(row: dict[str, Any], fields: tuple[str, ...]) -> list[str]:
    return [f for f in fields if row[f"a_{f}"] != row[f"b_{f}"]]


def diff(dir_a: str | Path, dir_b: str | Path) -> Diff:
    """Compare two results folders (ResultsError when either holds no results)."""
    con = duckdb.connect()
    for side, folder in zip(SIDES, (dir_a, dir_b)):
        _copy_tables(con, side, folder)
    pairs, unmatched = _pairs(con)
    con.execute("CREATE TABLE pairs (ord BIGINT, a_sweep VARCHAR, a_trial VARCHAR, b_sweep VARCHAR, b_trial VARCHAR)")
    con.executemany("INSERT INTO pairs VALUES (?, ?, ?, ?, ?)",
                    [(p["ord"], p["a"]["sweep_id"], p["a"]["trial_id"], p["b"]["sweep_id"], p["b"]["trial_id"]) for p in pairs])
    result = Diff(trials=len(pairs))
    result.candidates, result.evaluations = (con.execute(
        f"SELECT count(*) FROM (SELECT DISTINCT p.ord, t.* EXCLUDE (sweep_id, trial_id) FROM pairs p "
        f"JOIN a_{table} t ON t.sweep_id = p.a_sweep AND t.trial_id = p.a_trial)").fetchone()[0]
        for table in ("candidates", "evaluations"))

    def trial_named(p: dict[str, Any]) -> str:
        return f"trial {_params_shown(p['key'])} (A: {p['a']['trial_id']}, B: {p['b']['trial_id']})"

    def candidate_named(row: dict[str, Any]) -> str:  # segment 0 (every trial outside PBT) goes unnamed
        return f"{'segment ' + str(row['segment']) + ' ' if row['segment'] else ''}candidate {row['candidate_idx']}"

    candidate = _first_row_difference(con, "candidates", ("segment", "candidate_idx"), CANDIDATE_FIELDS,
                                      "ord, segment, candidate_idx")
    example = _first_row_difference(con, "evaluations", ("segment", "candidate_idx", "split", "example_id"),
                                    EVALUATION_FIELDS, "ord, segment, candidate_idx, split = 'test', split, example_id")
    trial_level = next(((p, changed) for p in pairs
                        if (changed := [f for f in TRIAL_FIELDS if p["a"][f] != p["b"][f]])), None)
    at = min([d["ord"] for d in (candidate, example) if d] + ([trial_level[0]["ord"]] if trial_level else []), default=None)
    if at is not None:
        pair = pairs[at]
        in_trial = [d for d in (example, candidate) if d and d["ord"] == at]
        first = min(in_trial, key=lambda d: (d["segment"], d["candidate_idx"], d is candidate), default=None)
        if first is None:  # only the trial's own fields differ
            changed = trial_level[1]
            result.first = f"{trial_named(pair)}: " + ", ".join(
                f"{f} {pair['a'][f]} in A, {pair['b'][f]} in B" for f in changed)
        elif first is example:
            where = f"{candidate_named(first)}, {first['split']} example {first['example_id']}"
            if first["only"]:
                result.first = f"{trial_named(pair)}: {where}: scored in {first['only']} only"
            else:
                result.first = (f"{trial_named(pair)}: {where}: score {first['a_score']} in A, {first['b_score']} in B"
                                if first["a_score"] != first["b_score"] else
                                f"{trial_named(pair)}: {where}: same score {first['a_score']}, "
                                f"{' and '.join(_changed(first, EVALUATION_FIELDS))} differ")
                result.details = [f"{side.upper()} {f}: {_short(first[f'{side}_{f}'])}"
                                  for f in ("prediction", "feedback") if f in _changed(first, EVALUATION_FIELDS)
                                  for side in SIDES]
        else:
            where = candidate_named(first)
            if first["only"]:
                result.first = f"{trial_named(pair)}: {where}: in {first['only']} only"
            else:
                changed = _changed(first, CANDIDATE_FIELDS)
                result.first = f"{trial_named(pair)}: {where}: " + ", ".join(
                    f"{f} {_short(first[f'a_{f}'], 60)} in A, {_short(first[f'b_{f}'], 60)} in B" for f in changed)
    elif unmatched["a"] or unmatched["b"]:
        side = "a" if unmatched["a"] else "b"
        trial = unmatched[side][0]
        result.first = (f"trial {_params_shown(trial['key'])} ({side.upper()}: {trial['trial_id']}) has no counterpart "
                        f"in {'B' if side == 'a' else 'A'} ({len(unmatched['a'])} of A's trials and "
                        f"{len(unmatched['b'])} of B's are unmatched)")
    return result
