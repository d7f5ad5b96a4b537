"""A user's program and metrics that raise, brought in by import path (task.program / task.metric) on the banking77
corpus: on some examples (a fixed part of them, told apart by their query) or on every one (a metric that reads a
field the examples lack)."""
from __future__ import annotations

import dspy

from gepa_lab.tasks.classify import label_metric, make_program


def program_raises_on(query: str) -> bool:
    return sum(map(ord, query)) % 4 == 0


def metric_raises_on(query: str) -> bool:
    return sum(map(ord, query)) % 4 == 1


class SometimesRaises(dspy.Module):
    def __init__(self, classify: dspy.Module):
        super().__init__()
        self.classify = classify

    def forward(self, query):
        if program_raises_on(query):
            raise ValueError(f"cannot route {query[:30]!r}")
        return self.classify(query=query)


def program_raising_on_some(inputs, label_sets, instruction):
    return SometimesRaises(make_program(inputs, label_sets, instruction))


def metric_raising_on_some(gold, pred, trace=None, pred_name=None, pred_trace=None):
    if metric_raises_on(gold.query):
        raise KeyError("customer_tier")
    return label_metric(gold, pred, trace, pred_name, pred_trace)


def metric_reading_a_missing_field(gold, pred, trace=None, pred_name=None, pred_trace=None):
    return float(gold.customer_tier == pred.intent)  # banking77's examples have no customer_tier
