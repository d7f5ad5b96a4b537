"""One self-contained HTML report of one or more results folders: viewable offline (images embedded as base64 PNG,
inline CSS, no script that runs).

    python -m gepa_lab.results report DIR [DIR ...] [--out FILE]     # DIR/report.html for one DIR

The sweep driver writes OUTPUT_DIR/report.html at the end of every sweep, `gepa_lab.run` at the end of every run,
and logs it to MLflow (an artifact of the sweep's parent run, of the run's own run) and to W&B (a run of its own,
job type `report`: the page as wandb.Html and as an artifact), as `tracking` says.

What it holds, each built by the query functions the CLI uses (gepa_lab.results.query):
- the leaderboard, each test score with its 95% interval (query.leaderboard, shown as the CLI shows it);
- best val score so far against metric calls, every trial (plots.progress_figure), and seed vs winner per trial;
- the winner's lineage: from the seed to the best trial's winning candidate, each step's val score and a word diff
  (difflib) of every instruction it changed;
- the effect of each swept key (query.effects);
- LM usage per role and per trial (lm_usage), and the rollout cache's savings that sweeps recorded in their summary;
- the trials that did not complete, with their reasons (trials.error).

Every figure also sits, as the query returned it, in a JSON block (<script type="application/json"
id="report-data">); each table is rendered from that block's rows (query.fold_intervals and query.cell, as the CLI
renders them), so the page and the data cannot disagree."""
from __future__ import annotations

import base64
import difflib
import html
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from string import Template
from typing import Any, Callable

import duckdb
from rich.console import Console
from rich.markup import escape

from gepa_lab import atomic
from gepa_lab.config.schema import TrackingConfig
from gepa_lab.progress import with_interval
from gepa_lab.results.query import (
    EFFECTS_METHOD, INTERVAL_CAPTION, LMS_METHOD, QUERIES, Result, ResultsError, best_trial, best_trials, cell, effects,
    fold_intervals, leaderboard, lm_comparison, open_results, short_headers, sql, trial_progress,
)
from gepa_lab.tracking import mlflow_sink, wandb_sink
from gepa_lab.tracking.secrets import find_secrets, redact_text, secret_values

REPORT_NAME = "report.html"
CONTENTS = ("One self-contained HTML report (viewable offline): the leaderboard with intervals, progress plots, the "
            "winner's lineage with instruction diffs, which knob mattered, LM usage and cache savings, the trials that "
            "did not complete.")
DATA_ID = "report-data"

# The candidates of a trial's segment, its last (lineage() walks them from the winner back to the seed). A PBT segment
# holds candidates inherited from a donor under their indices there: those are read where they were first made (the
# lineage table), unless the segment has a row of its own (GEPA re-scores the seed): that one comes last. Parameters:
# output_dir, sweep_id, trial_id, segment.
CANDIDATES_SQL = """
WITH inherited AS (
    SELECT candidate_idx, origin_trial_id, origin_segment, origin_candidate_idx FROM lineage
    WHERE output_dir = $1 AND sweep_id IS NOT DISTINCT FROM $2 AND trial_id = $3 AND segment = $4
      AND (origin_trial_id, origin_segment) IS DISTINCT FROM (trial_id, segment))
SELECT candidate_idx, iteration, parents, val_score, metric_calls, instructions_json, true AS own, created_at
FROM candidates WHERE output_dir = $1 AND sweep_id IS NOT DISTINCT FROM $2 AND trial_id = $3 AND segment = $4
UNION ALL
SELECT i.candidate_idx, c.iteration, c.parents, c.val_score, c.metric_calls, c.instructions_json, false, c.created_at
FROM inherited i JOIN candidates c ON c.output_dir = $1 AND c.sweep_id IS NOT DISTINCT FROM $2
 AND c.trial_id = i.origin_trial_id AND c.segment = i.origin_segment AND c.candidate_idx = i.origin_candidate_idx
ORDER BY candidate_idx, own, created_at
"""
USAGE_BY_ROLE_SQL = """
SELECT role, count(*) AS trials, sum(requests) AS requests, sum(cache_hits) AS cache_hits,
       sum(cache_hits) / nullif(sum(requests), 0) AS cache_hit_rate, sum(requests) - sum(cache_hits) AS sent,
       sum(errors) AS errors, sum(retries) AS retries, sum(prompt_tokens) AS prompt_tokens,
       sum(completion_tokens) AS completion_tokens, sum(cost_usd) AS cost_usd
FROM lm_usage GROUP BY role ORDER BY role
"""
UNFINISHED_SQL = """
SELECT trial_id, status, error, started_at, ended_at, metric_calls, output_dir
FROM trials WHERE status IS DISTINCT FROM 'completed'
ORDER BY started_at NULLS LAST, trial_id, output_dir
"""
CACHE_SQL = "SELECT sweep_id, summary_json FROM sweeps ORDER BY started_at, sweep_id"
CACHE_COLUMNS = ["sweep_id", "requests_saved", "shared_hits", "puts", "entries"]


class ReportError(ResultsError):
    """A report that cannot be written (a secret value inside it, no --out for several folders)."""


# ---------------------------------------------------------------------------------------- the figures


def table(result: Result) -> dict[str, Any]:
    return {"columns": list(result.columns), "rows": [list(row) for row in result.rows]}


def word_diff(old: str, new: str) -> list[list[str]]:
    """[op, text] segments turning old into new, word by word: '=' kept, '-' removed, '+' added (the '=' and '-'
    texts joined give old; the '=' and '+' texts give new)."""
    a, b = re.findall(r"\s+|\S+", old), re.findall(r"\s+|\S+", new)
    segments: list[list[str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            segments.append(["=", "".join(a[i1:i2])])
            continue
        if i2 > i1:
            segments.append(["-", "".join(a[i1:i2])])
        if j2 > j1:
            segments.append(["+", "".join(b[j1:j2])])
    return segments


def lineage(con: duckdb.DuckDBPyConnection, trial: dict[str, Any]) -> list[dict[str, Any]]:
    """The trial's winning candidate and its ancestors (first parent of each: a merge names two), seed first; each
    step with its instructions and a word diff of every instruction that differs from its parent's."""
    key = [trial["output_dir"], trial["sweep_id"], trial["trial_id"], trial["segment"]]
    rows = con.execute(CANDIDATES_SQL, key).fetchall()
    candidates = {idx: {"candidate_idx": idx, "iteration": it, "parents": list(parents or []), "val_score": val,
                        "metric_calls": calls, "instructions": json.loads(instructions or "{}")}
                  for idx, it, parents, val, calls, instructions, *_ in rows}  # a resumed trial's repeat: the later row
    chain, idx = [], trial["best_candidate_idx"]
    while idx in candidates and idx not in {step["candidate_idx"] for step in chain}:
        chain.append(candidates[idx])
        idx = candidates[idx]["parents"][0] if candidates[idx]["parents"] else None
    chain.reverse()
    for parent, step in zip([None, *chain], chain):
        before = parent["instructions"] if parent else {}
        step["diffs"] = {name: word_diff(before.get(name, ""), text)
                         for name, text in sorted(step["instructions"].items()) if parent and before.get(name) != text}
    return chain


def cache_savings(con: duckdb.DuckDBPyConnection) -> Result:
    """The rollout cache's counters each sweep recorded in its summary (lm_cache); empty for single runs."""
    rows = []
    for sweep_id, summary_json in sql(con, CACHE_SQL).rows:
        stats = (json.loads(summary_json or "{}") or {}).get("lm_cache") or {}
        if stats:
            rows.append((sweep_id, *(stats.get(key) for key in CACHE_COLUMNS[1:])))
    return Result(CACHE_COLUMNS, rows)


def unfinished(con: duckdb.DuckDBPyConnection) -> Result:
    """The trials that did not complete, with why (trials.error); their folder only when several are open."""
    result = sql(con, UNFINISHED_SQL)
    if len(sql(con, "SELECT DISTINCT output_dir FROM trials")) > 1:
        return result
    return Result(result.columns[:-1], [row[:-1] for row in result.rows])


def sweep_summaries(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    return [json.loads(text) for (text,) in sql(con, "SELECT summary_json FROM sweeps ORDER BY started_at").rows if text]


def report_data(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Every figure of the report, as the queries return them."""
    best = best_trial(con)
    per_task = best_trials(con)
    return {
        "best_trial": {k: v for k, v in best.items() if k != "config"} if best else None,
        # several tasks: each task's winner and its lineage (scores of different tasks are not compared)
        "winners": [{"task": task, "trial": {k: v for k, v in row.items() if k != "config"}, "lineage": lineage(con, row)}
                    for task, row in per_task.items()] if len(per_task) > 1 else [],
        "lm_comparison": table(lm_comparison(con)),
        "sweeps": [{k: s.get(k) for k in ("sweep", "sweep_id", "val_gain", "test_gain", "val_gain_unconfirmed",
                                          "test_gain_ci95", "test_gain_ci95_above_zero")} for s in sweep_summaries(con)],
        "leaderboard": table(leaderboard(con, limit=None)),
        "progress": [{"output_dir": key[0], "sweep_id": key[1], "trial_id": key[2], "points": [list(p) for p in points]}
                     for key, points in trial_progress(con).items()],
        "lineage": lineage(con, best) if best else [],
        "effects": table(effects(con)),
        "usage_by_role": table(sql(con, USAGE_BY_ROLE_SQL)),
        "usage": table(sql(con, QUERIES["usage"][1])),
        "cache": table(cache_savings(con)),
        "unfinished": table(unfinished(con)),
    }


def figures(con: duckdb.DuckDBPyConnection) -> list[tuple[str, bytes]]:
    """(caption, PNG) of every plot that has data."""
    from gepa_lab.results.plots import png_bytes, progress_figure, seed_vs_winner_figure  # matplotlib only here

    made = [("Best val score so far against metric calls, every trial", progress_figure(con)),
            ("Seed program vs winner per trial, val and test", seed_vs_winner_figure(con))]
    return [(caption, png_bytes(fig)) for caption, fig in made if fig is not None]


# ---------------------------------------------------------------------------------------- HTML

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #1d2733; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #d5dae0; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #eef1f5; } caption { caption-side: bottom; text-align: left; font-size: 0.85em; color: #556; }
img { max-width: 100%; border: 1px solid #d5dae0; margin: 0.5em 0; }
.diff { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.85em; background: #fafbfc;
        border: 1px solid #d5dae0; padding: 0.5em; }
del { background: #fdd; color: #811; } ins { background: #dfd; color: #161; text-decoration: none; }
.note { color: #556; font-size: 0.9em; }
</style>
</head>
<body>
<h1>$title</h1>
<p class="note">$generated</p>
$body
<script type="application/json" id="$data_id">$data</script>
</body>
</html>
""")


def _text(value: Any) -> str:
    return html.escape(cell(value))


def html_table(table_id: str, data: dict[str, Any], headers: Callable[[list[str]], list[str]] | None = None,
               caption: str | None = None, intervals: bool = False) -> str:
    """A table from a section of the data block: each score beside its interval when `intervals`, cells as the CLI
    shows them (query.cell)."""
    result = Result(data["columns"], [tuple(row) for row in data["rows"]])
    if intervals:
        result = fold_intervals(result)
    if not result.rows:
        return f'<p class="note" id="{table_id}">(none)</p>'
    names = headers(result.columns) if headers else result.columns
    head = "".join(f'<th data-column="{html.escape(c)}">{html.escape(n)}</th>' for c, n in zip(result.columns, names))
    body = "".join("<tr>" + "".join(f"<td>{_text(v)}</td>" for v in row) + "</tr>\n" for row in result.rows)
    note = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f'<table id="{table_id}">{note}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>'


def _headline(data: dict[str, Any]) -> str:
    if data["winners"]:
        return "\n".join(_trial_line(w["trial"], f"headline-{w['task']}", f"{w['task']}: best trial") for w in data["winners"])
    best = data["best_trial"]
    if best is None:
        return '<p id="headline">No trial has finished yet.</p>'
    out = [_trial_line(best, "headline", "Best trial")]
    for s in data["sweeps"]:
        if s.get("val_gain_unconfirmed") is not None:
            out.append(f'<p class="note">Sweep {html.escape(str(s["sweep_id"]))}: the winner was picked for its val '
                       f'score among all trials, which flatters it: val gain {s["val_gain"]:+.3f}, of which test did '
                       f'not confirm {s["val_gain_unconfirmed"]:+.3f}.</p>')
    return "\n".join(out)


def _trial_line(best: dict[str, Any], element_id: str, what: str) -> str:
    gain = None if best["best_test_score"] is None or best["seed_test_score"] is None else (
        best["best_test_score"] - best["seed_test_score"])
    line = (f"{html.escape(what)} <b>{html.escape(best['trial_id'])}</b>: val {with_interval(best['seed_val_score'])} &rarr; "
            f"{with_interval(best['best_val_score'])}, test "
            f"{with_interval(best['seed_test_score'], (best['seed_test_ci95_low'], best['seed_test_ci95_high']))} &rarr; "
            f"{with_interval(best['best_test_score'], (best['best_test_ci95_low'], best['best_test_ci95_high']))}, "
            f"test gain {with_interval(gain, (best['test_gain_ci95_low'], best['test_gain_ci95_high']), signed=True)} "
            f"({best['metric_calls']} metric calls, candidate {best['best_candidate_idx']} of {best['num_candidates']}).")
    return f'<p id="{html.escape(element_id)}">{line}</p>'


def _lineage_html(steps: list[dict[str, Any]], element_id: str = "lineage") -> str:
    if not steps:
        return f'<p class="note" id="{html.escape(element_id)}">(no winner yet)</p>'
    out = [f'<table id="{html.escape(element_id)}"><thead><tr><th>candidate_idx</th><th>parents</th><th>iteration</th><th>val_score</th>'
           '<th>metric_calls</th></tr></thead><tbody>']
    out += [f"<tr><td>{_text(s['candidate_idx'])}</td><td>{_text(', '.join(map(str, s['parents'])))}</td>"
            f"<td>{_text(s['iteration'])}</td><td>{_text(s['val_score'])}</td><td>{_text(s['metric_calls'])}</td></tr>"
            for s in steps]
    out.append("</tbody></table>")
    seed = steps[0]
    first = "The seed program" if seed["candidate_idx"] == 0 else "The earliest recorded ancestor"
    out.append(f"<h3>{first} (candidate {seed['candidate_idx']})</h3>")
    out += [f'<p><b>{html.escape(name)}</b></p><div class="diff">{html.escape(text)}</div>'
            for name, text in sorted(seed["instructions"].items())]
    tags = {"=": "{}", "-": "<del>{}</del>", "+": "<ins>{}</ins>"}
    for parent, step in zip(steps, steps[1:]):
        out.append(f"<h3>Candidate {step['candidate_idx']} from {parent['candidate_idx']}: val "
                   f"{cell(parent['val_score'])} &rarr; {cell(step['val_score'])}</h3>")
        if not step["diffs"]:
            out.append('<p class="note">instructions unchanged</p>')
        for name, segments in step["diffs"].items():
            text = "".join(tags[op].format(html.escape(part)) for op, part in segments)
            out.append(f'<p><b>{html.escape(name)}</b></p><div class="diff" data-candidate="{step["candidate_idx"]}" '
                       f'data-predictor="{html.escape(name)}">{text}</div>')
    return "\n".join(out)


def _json_value(value: Any) -> str:
    return cell(value)  # timestamps to the second, as the tables show them


def render(data: dict[str, Any], images: list[tuple[str, bytes]], title: str, generated: str) -> str:
    pictures = "\n".join(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
                         f'{base64.b64encode(png).decode()}"><figcaption class="note">{html.escape(caption)}</figcaption>'
                         f"</figure>" for caption, png in images) or '<p class="note">(nothing to plot yet)</p>'
    body = "\n".join([
        _headline(data),
        "<h2>Leaderboard</h2>",
        '<p class="note">Best val first; ties go to the trial that spent fewer metric calls. Test never picks.</p>',
        html_table("leaderboard", data["leaderboard"], short_headers, INTERVAL_CAPTION, intervals=True),
        "<h2>Progress</h2>", pictures,
        "<h2>The winner's lineage</h2>",
        '<p class="note">From the seed program to the best trial\'s winner, following each candidate\'s first parent; '
        'at each step the words its instructions lost (<del>struck</del>) and gained (<ins>marked</ins>).</p>',
        *([f"<h3>{html.escape(w['task'])}</h3>\n" + _lineage_html(w["lineage"], f"lineage-{w['task']}")
           for w in data["winners"]] or [_lineage_html(data["lineage"])]),
        "<h2>Task LMs compared</h2>",
        f'<p class="note">{html.escape(LMS_METHOD)}</p>',
        html_table("lm_comparison", data["lm_comparison"], short_headers, INTERVAL_CAPTION, intervals=True),
        "<h2>Which knob mattered</h2>",
        f'<p class="note">{html.escape(EFFECTS_METHOD)}</p>',
        html_table("effects", data["effects"], short_headers, INTERVAL_CAPTION, intervals=True),
        "<h2>LM usage</h2>",
        '<p class="note">Per role, over all trials; cache_hits: requests answered from the rollout cache (not sent).</p>',
        html_table("usage_by_role", data["usage_by_role"]),
        "<h3>Rollout cache savings per sweep</h3>",
        html_table("cache", data["cache"]),
        "<details><summary>Per trial and role</summary>", html_table("usage", data["usage"]), "</details>",
        "<h2>Trials that did not complete</h2>",
        '<p class="note">failed: the error; stopped or skipped: why the sweep ended it (budget, ASHA).</p>',
        html_table("unfinished", data["unfinished"]),
    ])
    # "</" inside the JSON would end the script element early
    blob = json.dumps(data, default=_json_value, ensure_ascii=False).replace("</", "<\\/")
    return PAGE.substitute(title=html.escape(title), generated=html.escape(generated), body=body, data_id=DATA_ID,
                           data=blob)


def _masked(value: Any, secrets: list[str]) -> Any:
    """Known secret values masked wherever they sit (a failed trial's error may quote one). Names are left alone:
    a predictor may well be called 'keywords'."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, list):
        return [_masked(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _masked(v, secrets) for k, v in value.items()}
    return value


def build_report(*dirs: str | Path) -> str:
    """The report of the given output folders, as HTML text (secret values masked, then checked for)."""
    con = open_results(*dirs)
    data = _masked(json.loads(json.dumps(report_data(con), default=_json_value)), secret_values())
    names = [s.get("sweep") or s.get("sweep_id") for s in data["sweeps"]]
    title = (f"gepa_lab sweep {names[0]}" if len(dirs) == 1 and len(names) == 1
             else "gepa_lab results: " + ", ".join(Path(d).name for d in dirs))
    generated = (f"{', '.join(str(Path(d).resolve()) for d in dirs)}; written "
                 f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    page = render(data, figures(con), title, generated)
    if hits := find_secrets(page):
        raise ReportError(f"refusing to write the report: it contains secret values {hits}")
    return page


def write_report(*dirs: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of dirs to out (default: DIR/report.html of the one DIR), atomically; return its path."""
    if out is None:
        if len(dirs) != 1:
            raise ReportError("a report of several folders needs --out FILE")
        out = Path(dirs[0]) / REPORT_NAME
    out = Path(out)
    atomic.write_text(out, build_report(*dirs))
    return out


def publish_report(root: Path, tracking: TrackingConfig, console: Console, *, mlflow_run: Callable[[], str | None],
                   wandb_group: str | None, run_name: str) -> Path | None:
    """At the end of a sweep or run: write root/report.html and log it, as `tracking` says, to the MLflow run that
    mlflow_run() names (asked only when MLflow is on) and to a W&B run of its own (in wandb_group, named run_name).
    The results stand without their report: a failure is said on the console, not raised."""
    try:
        path = write_report(root)
    except Exception as exc:
        console.print(f"[red]report not written[/]: {escape(f'{type(exc).__name__}: {exc}')}", soft_wrap=True)
        return None
    console.print(f"report: {escape(str(path))}", soft_wrap=True)

    def to_mlflow() -> None:
        if (run_id := mlflow_run()) is None:
            raise ReportError("no MLflow run of this output folder found")
        mlflow_sink.log_report(tracking.mlflow, root, run_id, path)

    for where, enabled, log in (
        ("MLflow", tracking.mlflow.enabled, to_mlflow),
        ("W&B", tracking.wandb.enabled and tracking.wandb.mode != "disabled",
         lambda: wandb_sink.log_report(tracking.wandb, root, wandb_group, run_name, path)),
    ):
        if enabled:
            try:
                log()
            except Exception as exc:
                console.print(f"[red]report not logged to {where}[/]: {escape(f'{type(exc).__name__}: {exc}')}",
                              soft_wrap=True)
    return path
