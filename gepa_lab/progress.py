"""A console sink for one compile: a line per GEPA iteration, then seed vs winner."""
from __future__ import annotations

from rich.console import Console
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


def scores_table(summary: dict) -> Table:
    table = Table(title=f"{summary['task']}: seed vs winner")
    for column in ("", "val", "test"):
        table.add_column(column, justify="right")
    table.add_row("seed", f"{summary['seed_val_score']:.3f}", f"{summary['seed_test_score']:.3f}")
    table.add_row("winner", f"{summary['best_val_score']:.3f}", f"{summary['best_test_score']:.3f}")
    return table
