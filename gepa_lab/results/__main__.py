"""python -m gepa_lab.results: query results folders with DuckDB.

    python -m gepa_lab.results [DIR ...] [--sql "SELECT ..." | --sql NAME] [--limit N] [--format table|csv|json]
    python -m gepa_lab.results plot [DIR]      # PNGs into DIR/plots/, their paths printed
    python -m gepa_lab.results effects [DIR ...] [--format table|csv|json]   # test score by value of each swept key
    python -m gepa_lab.results examples [DIR] [--trial ID] [--limit N] [--format ...]   # what the winner fixed, broke, still gets wrong
    python -m gepa_lab.results lms [DIR ...] [--task NAME] [--format ...]   # task LMs compared per task, paired intervals
    python -m gepa_lab.results report DIR [DIR ...] [--out FILE]   # one self-contained HTML page (DIR/report.html)
    python -m gepa_lab.results queries         # the named queries (--sql NAME)
    python -m gepa_lab.results diff DIR_A DIR_B   # "identical" (exit 0) or the first trial, candidate, example that differ (exit 1)

DIR defaults to the newest folder under outputs/. With no --sql the leaderboard is printed.
Errors (a folder without results, SQL DuckDB rejects) are one line on stderr, exit status 2."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from gepa_lab.cli import one_line_errors
from gepa_lab.results import diff as diffing
from gepa_lab.results.query import example_changes
from gepa_lab.results.query import (
    EFFECTS_METHOD, INTERVAL_CAPTION, LMS_METHOD, QUERIES, Result, ResultsError, effects, fold_intervals, leaderboard,
    lm_comparison, newest_output_dir, open_results, rich_table, short_headers, sql,
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def render(result: Result, fmt: str, title: str | None = None, out=None, headers: list[str] | None = None,
           intervals: bool = False) -> None:
    """Print rows as a rich table, CSV or JSON (CSV/JSON keep the column names as they are).
    intervals: the table shows each score with its 95% interval in brackets (CSV/JSON keep the bounds as columns)."""
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps([_jsonable(r) for r in result.dicts()], indent=2) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        for row in result.rows:
            writer.writerow(["" if v is None else (v.isoformat() if isinstance(v, datetime) else v) for v in row])
    else:
        if intervals:  # the short headers of the folded columns
            result = fold_intervals(result)
            headers = short_headers(result.columns)
        table = rich_table(result, title=title, headers=headers, caption=INTERVAL_CAPTION if intervals else None)
        Console(file=out, width=None if out.isatty() else 220).print(table)
        if not result.rows:
            Console(file=out).print("(no rows)")


def _dirs(given: list[str]) -> list[Path]:
    return [Path(d) for d in given] if given else [newest_output_dir()]


def _query_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gepa_lab.results",
        description="Query results folders with DuckDB (views: sweeps, trials, candidates, evaluations, lm_usage). "
        "Subcommands: `plot [DIR]`, `effects [DIR ...]`, `examples [DIR]`, `lms [DIR ...]`, `report DIR ...`, "
        "`diff DIR_A DIR_B`, `queries`.",
    )
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="output folders (default: the newest under outputs/)")
    parser.add_argument("--sql", help="SQL to run over the views, or the name of a named query (see `queries`)")
    parser.add_argument("--limit", type=int, default=20, help="leaderboard rows (default 20; 0 = all)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    args = parser.parse_args(argv)
    dirs = _dirs(args.dirs)
    con = open_results(*dirs)
    if args.sql:
        result = sql(con, args.sql)
        render(result, args.format, title=args.sql if args.sql in QUERIES else None)
    else:
        result = leaderboard(con, limit=args.limit or None)
        title = f"leaderboard: {', '.join(str(d) for d in dirs)}"
        render(result, args.format, title=title, intervals=True)


def _plot_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m gepa_lab.results plot", description="Write PNG plots into DIR/plots/.")
    parser.add_argument("dir", nargs="?", metavar="DIR", help="output folder (default: the newest under outputs/)")
    args = parser.parse_args(argv)
    from gepa_lab.results.plots import plot_all  # matplotlib only when plotting

    out = _dirs([args.dir] if args.dir else [])[0]
    paths = plot_all(open_results(out), out / "plots")
    if not paths:
        print(f"nothing to plot yet in {out} (no scored candidates or finished trials)", file=sys.stderr)
    for path in paths:
        print(path)


def _effects_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gepa_lab.results effects",
        description="Which knob mattered: for each swept key, the test score of the finished trials by value, "
        "with 95% intervals. " + EFFECTS_METHOD,
    )
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="output folders (default: the newest under outputs/)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    args = parser.parse_args(argv)
    dirs = _dirs(args.dirs)
    result = effects(open_results(*dirs))
    if not result.rows:
        print(f"no swept key to compare in {', '.join(map(str, dirs))}: no finished trials with per-example test "
              "scores, or their configs do not differ", file=sys.stderr)
        return
    render(result, args.format, title=f"effects: {', '.join(str(d) for d in dirs)}", intervals=True)


def _examples_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gepa_lab.results examples",
        description="A trial's test examples, its winner against the seed program: those it fixed, those it broke "
        "and those it still gets wrong (below the perfect score), with both predictions, the winner's feedback and "
        "the inputs (from the prepared corpus, when it is the one the trial used).",
    )
    parser.add_argument("dir", nargs="?", metavar="DIR", help="output folder (default: the newest under outputs/)")
    parser.add_argument("--trial", help="trial id (default: the best trial)")
    parser.add_argument("--limit", type=int, default=20, help="examples shown per outcome (default 20; 0 = all)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    args = parser.parse_args(argv)
    changes = example_changes(open_results(*_dirs([args.dir] if args.dir else [])), args.trial, args.limit or None)
    trial, counts = changes.trial, changes.counts
    title = (f"trial {trial['trial_id']}: candidate {trial['best_candidate_idx']} vs the seed on test: {counts['fixed']} "
             f"fixed, {counts['broken']} broken, {counts['wrong']} still wrong"
             + (f" (at most {args.limit} of each shown)" if args.limit else ""))
    render(changes.result, args.format, title=title)
    if changes.inputs_note:
        print(changes.inputs_note, file=sys.stderr)


def _lms_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gepa_lab.results lms",
        description="The task LMs compared on each task (or one): each LM's best trial, its test score and the paired "
        "difference to the task's winner, with 95% intervals. " + LMS_METHOD,
    )
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="output folders (default: the newest under outputs/)")
    parser.add_argument("--task", help="only this task (default: every task run with more than one task LM)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    args = parser.parse_args(argv)
    dirs = _dirs(args.dirs)
    where = ", ".join(map(str, dirs))
    con = open_results(*dirs)
    result = lm_comparison(con)
    if args.task is not None:
        tasks = [task for (task,) in sql(con, "SELECT DISTINCT task FROM trials ORDER BY task").rows]
        if args.task not in tasks:
            raise ResultsError(f"no task {args.task!r} in {where} (its tasks: {', '.join(map(str, tasks))})")
        result = Result(result.columns, [row for row in result.rows if row[0] == args.task])
    if not result.rows and args.task is None:
        raise ResultsError(f"no task in {where} has finished trials of more than one task LM: no LMs to compare")
    if not result.rows:
        raise ResultsError(f"task {args.task!r} in {where} has finished trials of one task LM only: no LMs to compare")
    render(result, args.format, title=f"task LMs: {where}", intervals=True)


def _report_main(argv: list[str]) -> None:
    from gepa_lab.results.report import CONTENTS, write_report  # its imports (matplotlib, tracking) only when reporting

    parser = argparse.ArgumentParser(prog="python -m gepa_lab.results report", description=CONTENTS)
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="output folders")
    parser.add_argument("--out", help="the HTML file to write (default: DIR/report.html; required for several DIRs)")
    args = parser.parse_args(argv)
    print(write_report(*args.dirs, out=args.out))


def _diff_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m gepa_lab.results diff", description=diffing.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir_a", metavar="DIR_A", help="output folder")
    parser.add_argument("dir_b", metavar="DIR_B", help="output folder")
    args = parser.parse_args(argv)
    result = diffing.diff(args.dir_a, args.dir_b)
    print("\n".join(result.lines()))
    sys.exit(0 if result.identical else 1)


def _queries_main(argv: list[str]) -> None:
    for name, (description, _) in QUERIES.items():
        print(f"{name:<12} {description}")


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A folder literally named like a subcommand ("plot", "report", ...) can still be queried as ./plot.
    if argv and argv[0] == "plot":
        _plot_main(argv[1:])
    elif argv and argv[0] == "effects":
        _effects_main(argv[1:])
    elif argv and argv[0] == "examples":
        _examples_main(argv[1:])
    elif argv and argv[0] == "lms":
        _lms_main(argv[1:])
    elif argv and argv[0] == "report":
        _report_main(argv[1:])
    elif argv and argv[0] == "diff":
        _diff_main(argv[1:])
    elif argv and argv[0] == "queries":
        _queries_main(argv[1:])
    else:
        _query_main(argv)


if __name__ == "__main__":
    main()
