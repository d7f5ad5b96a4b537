"""Classification task: one dspy.Predict whose output is one of the corpus's labels."""
from __future__ import annotations

from typing import Literal

import dspy

from gepa_lab.tasks import feedback


def make_program(labels: list[str], inputs: list[str], answer: str, instruction: str) -> dspy.Module:
    if not labels:
        raise ValueError("a classification task needs the corpus's label set (manifest 'labels')")
    fields = {name: (str, dspy.InputField()) for name in inputs}
    fields[answer] = (Literal[tuple(labels)], dspy.OutputField())
    signature = dspy.make_signature(fields, instruction)
    return dspy.Predict(signature)


def _answer_field(gold: dspy.Example) -> str:
    (field,) = gold.labels().keys()
    return field


def label_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    """Exact label match, with feedback that names the correct label."""
    field = _answer_field(gold)
    expected = str(gold[field]).strip()
    got = str(getattr(pred, field, "") or "").strip()
    if got == expected:
        return dspy.Prediction(score=1.0, feedback=feedback.correct(expected))
    return dspy.Prediction(score=0.0, feedback=feedback.incorrect(got, expected))
