"""A task = a prepared corpus + a DSPy program + a metric with feedback (GEPA's metric signature)."""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import dspy
from pydantic import Field

from gepa_lab.strict import StrictModel
from gepa_lab.corpus.read import answer_columns, label_sets
from gepa_lab.tasks.imports import ImportPathError, call_with_known_kwargs, import_object, named_parameters

METRIC_PARAMS = ("gold", "pred", "trace", "pred_name", "pred_trace")


class TaskConfig(StrictModel):
    name: str = Field(min_length=1)
    program: str  # import path: a dspy.Module instance, a Module class, or a factory returning one
    metric: str  # import path: metric(gold, pred, trace=None, pred_name=None, pred_trace=None)
    instruction: str = ""  # seed instruction handed to built-in program factories
    program_kwargs: dict[str, Any] = Field(default_factory=dict)


def resolve_metric(path: str) -> Callable:
    metric = import_object(path)
    if not callable(metric):
        raise ImportPathError(f"task.metric '{path}' is not callable")
    params = inspect.signature(metric).parameters
    takes_all = len(params) >= len(METRIC_PARAMS) or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values()
    )
    if not takes_all:
        raise ImportPathError(
            f"task.metric '{path}' must accept (gold, pred, trace=None, pred_name=None, pred_trace=None)"
        )
    return metric


def build_program(cfg: TaskConfig, manifest: dict) -> dspy.Module:
    target = import_object(cfg.program)
    if isinstance(target, dspy.Module):
        return copy.deepcopy(target)
    if not callable(target):
        raise ImportPathError(f"task.program '{cfg.program}' is neither a dspy.Module nor callable")
    answers, sets = answer_columns(manifest), label_sets(manifest)
    facts = {
        "inputs": list(manifest["inputs"]),
        "answers": answers,
        "label_sets": sets,
        "extras": list(manifest.get("extras") or []),
        "instruction": cfg.instruction,
    }
    if len(answers) == 1:
        facts.update(answer=answers[0], labels=sets.get(answers[0], []))
    elif singular := sorted(named_parameters(target) & {"answer", "labels"}):
        raise ImportPathError(
            f"task.program '{cfg.program}' takes {' and '.join(singular)}, which name one answer, but corpus"
            f" '{manifest['name']}' has the answers {', '.join(answers)}: take 'answers' and 'label_sets' instead"
        )
    program = call_with_known_kwargs(target, facts, cfg.program_kwargs)
    if not isinstance(program, dspy.Module):
        raise ImportPathError(f"task.program '{cfg.program}' returned {type(program).__name__}, not a dspy.Module")
    return program


def to_examples(rows: list[dict], manifest: dict) -> list[dspy.Example]:
    """Corpus rows -> dspy Examples holding every column the corpus declares: the inputs (with_inputs), the
    answers and the extras (the metric's gold; the row's id stays out)."""
    inputs = list(manifest["inputs"])
    columns = [*inputs, *answer_columns(manifest), *(manifest.get("extras") or [])]
    return [dspy.Example({k: row[k] for k in columns}).with_inputs(*inputs) for row in rows]


def predicted_answers(gold: dspy.Example, pred: Any) -> list[str]:
    """The gold example's non-input fields that the program outputs, i.e. its answers that are scored (extras,
    which a program does not output, stay out)."""
    return [field for field in gold.labels().keys() if field in pred]


@dataclass
class Task:
    name: str
    program: dspy.Module
    metric: Callable
    train: list[dspy.Example]
    val: list[dspy.Example]
    test: list[dspy.Example]
    manifest: dict
    corpus_dir: Path
