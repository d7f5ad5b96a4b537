"""A console sink for one compile: a line per GEPA iteration, then seed vs winner."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gepa_lab.events import Event


class ConsoleProgress:
    def __init__(self, budget: int | None = None, console: Console | None = None):
        self.budget = budget
        self.console = console or Console(stderr=True)

    def handle(self, event: Event) -> None:
        d = event.data
        if event.kind == "trial_started":
            self.console.print(f"[bold]compiling[/] {d['config']['task']['name']} -> {d['config']['output_dir']}")
        elif event.kind == "iteration":
            budget = f"/{self.budget}" if self.budget else ""
            mark = "[green]accepted[/]" if d["accepted"] else "rejected"
            lm_calls = sum(role["requests"] for role in d["usage"].values())
            self.console.print(
                f"iter {d['iteration']:>3}  {mark:<17}  best val {d['best_val']:.3f}  "
                f"metric calls {d['metric_calls']}{budget}  LM calls {lm_calls}  {d['seconds']:.0f}s"
            )


def with_interval(value: float | None, interval=None, signed: bool = False) -> str:
    """A score as '0.550 [0.400, 0.700]' (its 95% interval in brackets when known); signed for a gain: '+0.150 [...]'."""
    if value is None:
        return ""
    number = "{:+.3f}" if signed else "{:.3f}"
    text = number.format(value)
    if interval and None not in interval:
        text += " [" + ", ".join(number.format(bound) for bound in interval) + "]"
    return text


def scores_table(summary: dict) -> Table:
    caption = escape("[ ]: 95% intervals, bootstrap over test examples") if summary.get("best_test_ci95") else None
    table = Table(title=f"{summary['task']}: seed vs winner", caption=caption)
    for column in ("", "val", "test"):
        table.add_column(column, justify="right")
    table.add_row("seed", f"{summary['seed_val_score']:.3f}", with_interval(summary["seed_test_score"], summary.get("seed_test_ci95")))
    table.add_row("winner", f"{summary['best_val_score']:.3f}", with_interval(summary["best_test_score"], summary.get("best_test_ci95")))
    table.add_row("gain", with_interval(summary["best_val_score"] - summary["seed_val_score"], signed=True),
                  with_interval(summary["best_test_score"] - summary["seed_test_score"], summary.get("test_gain_ci95"), signed=True))
    return table
