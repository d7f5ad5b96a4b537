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
from gepa_lab.tasks.imports import ImportPathError, call_with_known_kwargs, import_object

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
    facts = {
        "labels": manifest.get("labels") or [],
        "inputs": list(manifest["inputs"]),
        "answer": manifest["answer"],
        "instruction": cfg.instruction,
    }
    program = call_with_known_kwargs(target, facts, cfg.program_kwargs)
    if not isinstance(program, dspy.Module):
        raise ImportPathError(f"task.program '{cfg.program}' returned {type(program).__name__}, not a dspy.Module")
    return program


def to_examples(rows: list[dict], inputs: list[str], answer: str) -> list[dspy.Example]:
    """Corpus rows -> dspy Examples holding the inputs and the answer only (the metric's gold)."""
    return [dspy.Example({k: row[k] for k in (*inputs, answer)}).with_inputs(*inputs) for row in rows]


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
