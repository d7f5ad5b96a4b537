"""Cleaning with Polars: keep the declared columns, normalize whitespace, extract and map answers, drop empty
and duplicate rows, and check labels."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import polars as pl

from .config import CorpusConfig, pattern_group
from .errors import CorpusError, no_column
from .raw import RawTable

_NESTED = (pl.List, pl.Array, pl.Struct, pl.Object)


def _collapse(e: pl.Expr) -> pl.Expr:
    """All runs of whitespace (newlines, tabs, NBSP, ...) become one space; ends trimmed."""
    return e.str.replace_all(r"\s+", " ").str.strip_chars()


def _trim(e: pl.Expr) -> pl.Expr:
    """Line endings normalized to \\n and ends trimmed; inner layout kept (for worked solutions etc.)."""
    return e.str.replace_all("\r\n", "\n", literal=True).str.replace_all("\r", "\n", literal=True).str.strip_chars()


def _as_text(t: RawTable, field: str, src: str) -> pl.Expr:
    dtype = t.df.schema[src]
    if isinstance(dtype, _NESTED) or dtype in _NESTED:
        raise CorpusError(f"{t.shown}: column '{src}' ({field}) holds nested values ({dtype}), not text")
    return pl.col(src) if dtype == pl.String else pl.col(src).cast(pl.String)


def wanted_columns(cfg: CorpusConfig) -> list[tuple[str, str]]:
    """(config field, raw column) for every raw column a corpus reads."""
    return (
        [(f"inputs.{o}", s) for o, s in cfg.inputs.items()]
        + [(f"answer.{o}", s) for o, s in cfg.answer.items()]
        + [(f"extras.{o}", s) for o, s in cfg.extras.items()]
    )


def _answer_expr(cfg: CorpusConfig, raw: pl.Expr) -> pl.Expr:
    """One raw answer column cleaned: answer_pattern, answer_remove, whitespace, label_map."""
    answer = raw
    if cfg.answer_pattern is not None:
        answer = answer.str.extract(cfg.answer_pattern, pattern_group(cfg.answer_pattern))
    for s in cfg.answer_remove:
        answer = answer.str.replace_all(s, "", literal=True)
    answer = _collapse(answer)
    if cfg.label_map:
        answer = answer.replace(cfg.label_map)
    return answer


def _present(column: str) -> pl.Expr:
    return pl.col(column).is_not_null() & (pl.col(column) != "")


def clean_table(
    t: RawTable, cfg: CorpusConfig, labels: dict[str, list[str] | None], labels_from: dict[str, str]
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """One raw table -> rows with exactly the prepared columns (inputs, answers, extras), cleaned; plus stats.
    labels: each answer's label set (None: not checked)."""
    for field, src in wanted_columns(cfg):
        if src not in t.df.columns:
            raise no_column(t.shown, src, field, t.df.columns)
    exprs = [_collapse(_as_text(t, f"inputs.{o}", s)).alias(o) for o, s in cfg.inputs.items()]
    raw_present = {}  # answer -> name of a helper column: was the raw answer there before cleaning?
    for o, s in cfg.answer.items():
        raw = _trim(_as_text(t, f"answer.{o}", s))
        exprs.append(_answer_expr(cfg, raw).alias(o))
        raw_present[o] = f"__raw_answer_present.{o}"
        exprs.append((raw.is_not_null() & (raw != "")).alias(raw_present[o]))
    exprs += [_trim(_as_text(t, f"extras.{o}", s)).alias(o) for o, s in cfg.extras.items()]
    df = t.df.select(exprs)

    stats: dict[str, Any] = {"source": t.shown, "role": t.role, "rows_read": df.height}
    required = [*cfg.inputs, *cfg.answer]
    if cfg.answer_pattern is not None:
        no_match = pl.any_horizontal([pl.col(raw_present[o]) & ~_present(o) for o in cfg.answer])
        stats["dropped_no_answer_match"] = int(df.select(no_match.sum()).item())
        df = df.filter(~no_match)
    empty_counts = {c: int(df.select((~_present(c)).sum()).item()) for c in required}
    before = df.height
    df = df.filter(pl.all_horizontal([_present(c) for c in required])).drop(list(raw_present.values()))
    stats["dropped_empty"] = before - df.height
    stats["empty_by_column"] = {c: n for c, n in empty_counts.items() if n}

    if df.height == 0:
        src_of = {**cfg.inputs, **cfg.answer}
        detail = ", ".join(f"{n} with empty '{src_of[c]}'" for c, n in empty_counts.items() if n)
        if stats.get("dropped_no_answer_match"):
            sources = " or ".join(f"'{s}'" for s in cfg.answer.values())
            detail = ", ".join(
                x for x in (f"{stats['dropped_no_answer_match']} where answer_pattern found nothing in {sources}", detail) if x
            )
        raise CorpusError(
            f"{t.shown}: no rows left after cleaning ({stats['rows_read']} read"
            + (f"; {detail}" if detail else "")
            + ")"
        )

    for o, s in cfg.answer.items():
        if labels.get(o) is None:
            continue
        unknown = df.filter(~pl.col(o).is_in(labels[o])).get_column(o)
        if unknown.len():
            example = unknown.head(1).item()
            raise CorpusError(
                f"{t.shown}: column '{s}' has {unknown.len()} value(s) not among the labels"
                f" ({labels_from[o]}), e.g. '{example}'; fix the labels or add a label_map"
            )
    return df, stats


def row_ids(df: pl.DataFrame, inputs: list[str]) -> list[str]:
    """Stable example id: SHA-256 (first 16 hex digits) of the input values; independent of seed and sizes."""
    cols = [df.get_column(c).to_list() for c in inputs]
    return [
        hashlib.sha256(json.dumps(list(vals), ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()[:16]
        for vals in zip(*cols)
    ]


def with_ids(df: pl.DataFrame, cfg: CorpusConfig) -> pl.DataFrame:
    return df.with_columns(pl.Series("id", row_ids(df, list(cfg.inputs)), dtype=pl.String))
