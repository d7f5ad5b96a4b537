"""Plots of a results folder (matplotlib, Agg backend unless MPLBACKEND names one: no display needed).

    python -m gepa_lab.results plot DIR   ->  DIR/plots/progress.png, DIR/plots/seed_vs_winner.png

progress.png: per trial, the best val score GEPA had found against the metric calls spent (one
step line per trial, from the candidates table). seed_vs_winner.png: per trial, the seed
program's val and test scores beside the winner's (from the trials table)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

if not os.environ.get("MPLBACKEND"):  # a backend someone chose stays: a Jupyter kernel's inline one draws in the notebook
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import duckdb  # noqa: E402

from gepa_lab.results.query import LEADERBOARD_SQL, sql, trial_progress, varying_params  # noqa: E402

MAX_LABELLED = 12  # more trials than this: lines stay, the legend shows the best ones only


def trials_with_labels(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """The leaderboard's rows (best val first), each with a `label` for legends:
    'trial_id (varied params)', prefixed by its output folder when several are open."""
    rows = sql(con, LEADERBOARD_SQL).dicts()
    params = varying_params(r["config_json"] for r in rows)
    keys = sorted({k for p in params.values() for k in p})
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    if len(set(short.values())) < len(keys):  # lm.temperature vs reflection_lm.temperature
        short = {k: k for k in keys}
    several_dirs = len({r["output_dir"] for r in rows}) > 1
    for i, r in enumerate(rows):
        varied = ", ".join(f"{short[k]}={v}" for k, v in params.get(i, {}).items())
        name = f"{Path(r['output_dir']).name}/{r['trial_id']}" if several_dirs else r["trial_id"]
        r["label"] = f"{name} ({varied})" if varied else name
        if r["status"] not in (None, "completed"):
            r["label"] += f" [{r['status']}]"
    return rows


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write a figure as PNG (120 dpi) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def png_bytes(fig: plt.Figure) -> bytes:
    """A figure as PNG bytes (as save() writes it), then closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def progress_figure(con: duckdb.DuckDBPyConnection) -> plt.Figure | None:
    """Best val score so far vs metric calls, one line per trial. None when no candidate was scored."""
    curves = trial_progress(con)
    if not curves:
        return None
    labels = {(r["output_dir"], r["sweep_id"] or "", r["trial_id"]): r["label"] for r in trials_with_labels(con)}
    finals = sorted(curves, key=lambda k: (-curves[k][-1][1], curves[k][-1][0]))
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    for rank, key in enumerate(finals):
        points = curves[key]
        xs = [x for x, _ in points]
        ys = [y for _, y in points]
        last_x = max(xs)
        label = labels.get(key, key[2]) if rank < MAX_LABELLED else None
        (line,) = ax.step(xs, ys, where="post", label=label, linewidth=2 if rank == 0 else 1.3)
        ax.plot(xs, ys, "o", markersize=3, color=line.get_color())
        ax.plot([last_x], [ys[-1]], "o", markersize=6, color=line.get_color())
    ax.set_xlabel("metric calls (program rollouts)")
    ax.set_ylabel("best val score so far")
    ax.set_title("GEPA progress per trial: best validation score vs metric calls")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", title="trial (best first)", title_fontsize=8)
    return fig


def seed_vs_winner_figure(con: duckdb.DuckDBPyConnection) -> plt.Figure | None:
    """Seed vs winner, val and test, one row per trial (best val on top). None when no trial finished."""
    board = [r for r in trials_with_labels(con) if r["best_val_score"] is not None]
    if not board:
        return None
    n = len(board)
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.6 + 0.55 * n), sharey=True, layout="constrained")
    ys = list(range(n))[::-1]  # best val on top
    top = max(max(r[f"{w}_{s}_score"] or 0.0 for w in ("seed", "best") for s in ("val", "test")) for r in board)
    for ax, split in zip(axes, ("val", "test")):
        seed = [r[f"seed_{split}_score"] or 0.0 for r in board]
        best = [r[f"best_{split}_score"] or 0.0 for r in board]
        bars_seed = ax.barh([y + 0.2 for y in ys], seed, height=0.4, label="seed", color="#9aa5b1")
        bars_best = ax.barh([y - 0.2 for y in ys], best, height=0.4, label="winner", color="#2b7bba")
        for bars in (bars_seed, bars_best):
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
        ax.set_title(f"{split} score")
        ax.set_xlim(0, min(1.0, top * 1.18) if top > 0 else 1.0)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(ys, [r["label"] for r in board], fontsize=8)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle("Seed program vs GEPA winner per trial (best val on top)")
    return fig


def plot_progress(con: duckdb.DuckDBPyConnection, path: str | Path) -> Path | None:
    """progress_figure() as a PNG at path; None when there is nothing to plot."""
    fig = progress_figure(con)
    return None if fig is None else save(fig, path)


def plot_seed_vs_winner(con: duckdb.DuckDBPyConnection, path: str | Path) -> Path | None:
    """seed_vs_winner_figure() as a PNG at path; None when there is nothing to plot."""
    fig = seed_vs_winner_figure(con)
    return None if fig is None else save(fig, path)


def plot_all(con: duckdb.DuckDBPyConnection, out_dir: str | Path) -> list[Path]:
    """Write every plot that has data into out_dir; return their paths."""
    out_dir = Path(out_dir)
    made = [
        plot_progress(con, out_dir / "progress.png"),
        plot_seed_vs_winner(con, out_dir / "seed_vs_winner.png"),
    ]
    return [p for p in made if p is not None]
