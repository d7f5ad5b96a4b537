"""Reading a report (gepa_lab.results.report) back, and checking each figure in it against the tables: its data block
against queries this module runs itself, each visible table against that data as the CLI shows it, each image
decodes, nothing is fetched from elsewhere."""
from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib.image

from gepa_lab.progress import with_interval
from gepa_lab.results import query
from gepa_lab.results.query import Result, cell, fold_intervals


class ReportPage(HTMLParser):
    """The parts of a report page the checks read: tables by id, images, diffs, the JSON data block, and every
    attribute that could load something (src, href) or run something (script)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.diffs: dict[tuple[int, str], list[list[str]]] = {}
        self.loads: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.headline = ""
        self.data_text = ""
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._diff: tuple[int, str] | None = None
        self._op = "="
        self._in = ""
        self.feed(text)
        self.data = json.loads(self.data_text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.loads += [f"{tag} {k}={v}" for k, v in attrs if k in ("src", "href") and not (v or "").startswith("data:")]
        if tag == "img":
            self.images.append(a["src"] or "")
        elif tag == "script":
            self.scripts.append(a)
            self._in = "script"
        elif tag == "link":
            self.loads.append(f"link {a}")
        elif tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "div" and "data-candidate" in a:
            self._diff = (int(a["data-candidate"]), a["data-predictor"])
            self.diffs[self._diff] = []
        elif tag in ("del", "ins") and self._diff:
            self._op = "-" if tag == "del" else "+"
        elif tag == "p" and a.get("id") == "headline":
            self._in = "headline"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" or (tag == "p" and self._in == "headline"):
            self._in = ""
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "div":
            self._diff = None
        elif tag in ("del", "ins"):
            self._op = "="

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.data_text += data
        elif self._in == "headline":
            self.headline += data
        if self._cell is not None:
            self._cell.append(data)
        if self._diff is not None:
            self.diffs[self._diff].append([self._op, data])

    def rows(self, table_id: str) -> list[list[str]]:
        """The body rows of a table (its header row dropped)."""
        return self.tables[table_id][1:]


def as_json(result: Result) -> dict[str, Any]:
    """A query's result as the report's data block holds it (timestamps as the tables show them)."""
    return json.loads(json.dumps({"columns": result.columns, "rows": [list(r) for r in result.rows]}, default=cell))


def shown(section: dict[str, Any], intervals: bool = False) -> list[list[str]]:
    """The cells the CLI would show for a section: each score with its interval, formatted by query.cell."""
    result = Result(section["columns"], [tuple(r) for r in section["rows"]])
    result = fold_intervals(result) if intervals else result
    return [[cell(v) for v in row] for row in result.rows]


def _merged(segments: list[list[str]]) -> list[list[str]]:
    merged: list[list[str]] = []
    for op, text in segments:
        if merged and merged[-1][0] == op:
            merged[-1][1] += text
        else:
            merged.append([op, text])
    return merged


def expected_lineage(con, best: dict[str, Any]) -> list[tuple[int, float, dict[str, str]]]:
    """(candidate, val score, instructions) from the seed to the winner, following first parents."""
    rows = con.execute(
        "SELECT candidate_idx, parents, val_score, instructions_json FROM candidates "
        "WHERE output_dir = ? AND trial_id = ?", [best["output_dir"], best["trial_id"]]).fetchall()
    by_idx = {idx: (parents, val, json.loads(text)) for idx, parents, val, text in rows}
    chain, idx = [], best["best_candidate_idx"]
    while idx is not None:
        parents, val, instructions = by_idx[idx]
        chain.append((idx, val, instructions))
        idx = parents[0] if parents else None
    return chain[::-1]


def check_report(path: Path, *dirs: Path) -> ReportPage:
    """Every figure of the report at path equals the same query on the tables of dirs; returns the page."""
    page = ReportPage(path.read_text())
    data = page.data
    con = query.open_results(*dirs)

    # offline: nothing loaded from elsewhere, no script but the data block
    assert not page.loads, page.loads
    assert page.scripts == [{"type": "application/json", "id": "report-data"}], page.scripts
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:40]
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200, pixels.shape

    # the leaderboard and the effects: the CLI's queries, shown with intervals as the CLI shows them
    for name, result in (("leaderboard", query.leaderboard(con, limit=None)), ("effects", query.effects(con))):
        assert data[name] == as_json(result), name
        if result.rows:
            assert page.rows(name) == shown(data[name], intervals=True), name
    assert [r[1] for r in page.rows("leaderboard")] == query.leaderboard(con, limit=None).column("trial_id")

    # best val so far against metric calls, every trial
    progress: dict[tuple, list[list]] = {}
    for output_dir, sweep_id, trial_id, calls, val in con.execute(
            "SELECT output_dir, sweep_id, trial_id, metric_calls, val_score FROM candidates WHERE val_score IS NOT NULL "
            "ORDER BY output_dir, sweep_id, trial_id, metric_calls, candidate_idx").fetchall():
        points = progress.setdefault((output_dir, sweep_id, trial_id), [])
        points.append([calls, max(val, points[-1][1]) if points else val])
    assert {(p["output_dir"], p["sweep_id"], p["trial_id"]): p["points"] for p in data["progress"]} == progress
    finished = con.execute("SELECT count(*) FROM trials WHERE best_val_score IS NOT NULL").fetchone()[0]
    assert len(page.images) == bool(progress) + bool(finished)  # progress, and seed vs winner

    # the winner's lineage, and each step's diff: the parent's text and the child's, shown as the data holds it
    best = query.best_trial(con)
    steps = data["lineage"]
    if best is None:
        assert steps == []
    else:
        assert data["best_trial"]["trial_id"] == best["trial_id"]
        chain = expected_lineage(con, best)
        assert [(s["candidate_idx"], s["val_score"], s["instructions"]) for s in steps] == chain
        assert [r[0] for r in page.rows("lineage")] == [str(idx) for idx, _, _ in chain]
        assert [r[3] for r in page.rows("lineage")] == [cell(val) for _, val, _ in chain]
        for parent, step in zip(steps, steps[1:]):
            changed = {n for n, text in step["instructions"].items() if parent["instructions"].get(n) != text}
            assert set(step["diffs"]) == changed
            for name, segments in step["diffs"].items():
                assert "".join(t for op, t in segments if op != "+") == parent["instructions"].get(name, "")
                assert "".join(t for op, t in segments if op != "-") == step["instructions"][name]
                assert _merged(page.diffs[(step["candidate_idx"], name)]) == _merged(segments)
        interval = (best["best_test_ci95_low"], best["best_test_ci95_high"])
        assert f"Best trial {best['trial_id']}:" in page.headline
        assert with_interval(best["best_test_score"], interval) in page.headline

    # LM usage: per role summed here from lm_usage, per trial as the CLI's named query
    roles: dict[str, list] = {}
    for role, requests, hits, prompt, completion in con.execute(
            "SELECT role, requests, cache_hits, prompt_tokens, completion_tokens FROM lm_usage").fetchall():
        totals = roles.setdefault(role, [0, 0, 0, 0, 0])
        for i, value in enumerate((1, requests, hits, prompt, completion)):
            totals[i] += value
    by_role = [dict(zip(data["usage_by_role"]["columns"], row)) for row in data["usage_by_role"]["rows"]]
    assert {r["role"]: [r["trials"], r["requests"], r["cache_hits"], r["prompt_tokens"], r["completion_tokens"]]
            for r in by_role} == roles
    assert all(r["sent"] == r["requests"] - r["cache_hits"] for r in by_role)
    assert data["usage"] == as_json(query.sql(con, "usage"))
    for name in ("usage_by_role", "usage", "cache", "unfinished"):
        if data[name]["rows"]:
            assert page.rows(name) == shown(data[name]), name

    # the rollout cache's savings each sweep recorded; the trials that did not complete, with their reasons
    recorded = [json.loads(text).get("lm_cache") for (text,) in con.execute("SELECT summary_json FROM sweeps").fetchall()]
    assert [r[1] for r in data["cache"]["rows"]] == [c["requests_saved"] for c in recorded if c]
    unfinished = con.execute("SELECT trial_id, status, error FROM trials WHERE status <> 'completed' "
                             "ORDER BY trial_id").fetchall()
    assert sorted(tuple(r[:3]) for r in data["unfinished"]["rows"]) == unfinished
    return page
