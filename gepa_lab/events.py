"""One stream of events per trial; every sink (Tune, W&B, MLflow, Parquet, progress) subscribes to it.

GEPA swallows exceptions raised inside its callbacks, so the stream catches each sink's failure
itself and reports it on stderr and in `failures`: a broken sink is visible, never silent, and
never stops the other sinks or the compile."""
from __future__ import annotations

import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Event:
    # trial_started | candidate | iteration | evaluation | trial_finished | trial_failed
    kind: str
    trial_id: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)


class Sink(Protocol):
    def handle(self, event: Event) -> None: ...


class EventStream:
    def __init__(self, trial_id: str, sinks: list[Sink] | None = None):
        self.trial_id = trial_id
        self.sinks: list[Sink] = list(sinks or [])
        self.failures: Counter[str] = Counter()

    def emit(self, kind: str, **data: Any) -> Event:
        event = Event(kind, self.trial_id, data)
        for sink in self.sinks:
            try:
                sink.handle(event)
            except Exception as exc:  # report, count, carry on with the other sinks
                name = type(sink).__name__
                self.failures[name] += 1
                print(f"[gepa_lab] sink {name} failed on '{kind}' (trial {self.trial_id}): {exc!r}", file=sys.stderr)
                if self.failures[name] == 1:
                    traceback.print_exc(file=sys.stderr)
        return event


# The trial_finished summary's 95% intervals, each [low, high] (gepa_lab.results.stats computes them). Tables and
# trackers that hold scalars store each as KEY_low and KEY_high.
INTERVALS = ("seed_test_ci95", "best_test_ci95", "test_gain_ci95")


def interval_bounds(summary: dict[str, Any]) -> dict[str, float | None]:
    """{'best_test_ci95': [0.4, 0.7], ...} -> {'best_test_ci95_low': 0.4, 'best_test_ci95_high': 0.7, ...}
    (None for an interval the summary lacks: no test examples, or a summary written before intervals existed)."""
    bounds: dict[str, float | None] = {}
    for key in INTERVALS:
        low, high = summary.get(key) or (None, None)
        bounds.update({f"{key}_low": low, f"{key}_high": high})
    return bounds
