"""Classification task: one dspy.Predict whose outputs are the corpus's answers, each one of its own labels."""
from __future__ import annotations

from typing import Literal

import dspy

from gepa_lab.tasks import feedback
from gepa_lab.tasks.task import predicted_answers


def make_program(inputs: list[str], label_sets: dict[str, list[str]], instruction: str) -> dspy.Module:
    if not label_sets or not all(label_sets.values()):
        raise ValueError("a classification task needs the corpus's label set of every answer (manifest 'labels')")
    fields = {name: (str, dspy.InputField()) for name in inputs}
    for answer, labels in label_sets.items():
        fields[answer] = (Literal[tuple(labels)], dspy.OutputField())
    signature = dspy.make_signature(fields, instruction)
    return dspy.Predict(signature)


def label_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    """Exact label match, with feedback that names the correct label; with several answers the mean of the
    matches, with feedback on each answer."""
    fields = predicted_answers(gold, pred)
    if not fields:
        return dspy.Prediction(score=0.0, feedback=f"The output has none of the answer fields ({', '.join(gold.labels().keys())}).")
    matches = {field: (str(getattr(pred, field, "") or "").strip(), str(gold[field]).strip()) for field in fields}
    if len(fields) == 1:
        ((got, expected),) = matches.values()
        if got == expected:
            return dspy.Prediction(score=1.0, feedback=feedback.correct(expected))
        return dspy.Prediction(score=0.0, feedback=feedback.incorrect(got, expected))
    score = sum(got == expected for got, expected in matches.values()) / len(matches)
    return dspy.Prediction(score=score, feedback=" ".join(feedback.on_field(f, got, expected) for f, (got, expected) in matches.items()))
