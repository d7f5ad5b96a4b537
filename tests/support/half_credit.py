"""A metric that gives half the credit gepa_lab's own does, by import path (task.metric): a trial scored with it is
weaker than one scored with label_metric at every number of metric calls, so ASHA has a trial it must stop."""
from __future__ import annotations

import dspy

from gepa_lab.tasks.classify import label_metric


def half_credit_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    judged = label_metric(gold, pred, trace, pred_name, pred_trace)
    return dspy.Prediction(score=judged.score / 2, feedback=judged.feedback)
