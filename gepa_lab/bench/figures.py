"""Every figure bench.json holds, as gepa_lab/bench/figures.yaml declares them: its key, how it is shown, its unit, the
range a sane value lies in (what the smoke test checks: no test asserts a time), the target it is held to, and its
definition (docs/benchmarks.md prints them)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_TARGETS = {"at_least": ("≥ {}", lambda v, t: v >= t), "below": ("< {}", lambda v, t: v < t),
            "equals": ("{}", lambda v, t: v == t)}


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    definition: str
    unit: str = ""
    range: tuple[float, float] = (0.0, math.inf)
    target: dict[str, Any] | None = None  # {at_least | below | equals: value}
    goal: str = ""  # a target in words, not checked

    @property
    def target_text(self) -> str:
        if not self.target:
            return self.goal
        (kind, value), = self.target.items()
        shown = "yes" if value is True else f"{value:,}" if isinstance(value, (int, float)) else value
        return _TARGETS[kind][0].format(shown)

    def met(self, value: Any) -> bool | None:
        if not self.target or value is None:
            return None
        (kind, target), = self.target.items()
        return _TARGETS[kind][1](value, target)

    def in_range(self, value: Any) -> bool:
        if isinstance(value, bool):
            return True
        low, high = self.range
        return isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high

    def shown(self, value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


FIGURES = [Figure(**{**entry, "range": tuple(entry.get("range", (0.0, math.inf)))})
           for entry in yaml.safe_load((Path(__file__).with_name("figures.yaml")).read_text())]
KEYS = [f.key for f in FIGURES]
