"""Math word problems (gsm8k): ChainOfThought to a numeric answer."""
from __future__ import annotations

import re

import dspy

from gepa_lab.tasks import feedback
from gepa_lab.tasks.task import predicted_answers

_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def make_program(inputs: list[str], answer: str, instruction: str) -> dspy.Module:
    fields = {name: (str, dspy.InputField()) for name in inputs}
    fields[answer] = (float, dspy.OutputField())
    return dspy.ChainOfThought(dspy.make_signature(fields, instruction))


def to_number(value) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    match = _NUMBER.search(str(value or ""))
    return float(match.group().replace(",", "")) if match else None


def _fmt(x: float | None) -> str:
    return "nothing" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


def numeric_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    """1.0 when the predicted number equals the gold number (to 1e-6)."""
    fields = predicted_answers(gold, pred)
    field = fields[0] if fields else next(iter(gold.labels()))
    expected, got = to_number(gold[field]), to_number(getattr(pred, field, None))
    if expected is not None and got is not None and abs(expected - got) < 1e-6:
        return dspy.Prediction(score=1.0, feedback=feedback.correct(_fmt(expected)))
    return dspy.Prediction(score=0.0, feedback=feedback.incorrect(_fmt(got), _fmt(expected)))
