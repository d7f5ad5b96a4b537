"""What the metric said about each example (the program's prediction and the feedback), recorded where the metric
is called: GEPA's events carry each candidate's scores, not the feedback text.

Which candidate is being scored: dspy calls a program and then the metric on the same thread, one example after
another (dspy.Evaluate's workers, GEPA's trace capture), and GEPA builds one program per candidate with that
candidate's instructions. So a dspy callback notes, per thread, the outermost module call (the program), and the
metric wrapper keys what it records by that program's instructions and the example's corpus id. GEPA's
valset-evaluated event names a candidate by its instructions: the trial takes that candidate's records then."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import dspy
from dspy.utils.callback import BaseCallback

# Stored text is capped at this many characters: each feedback, and each field of a prediction (so the JSON of
# the prediction stays valid); a capped text ends with "…".
TEXT_CAP = 2000

# The corpus id of an example: an attribute outside the Example's fields, so metrics and GEPA never see it
_ID = "_corpus_id"


def with_ids(examples: list[dspy.Example], ids: Iterable[str]) -> list[dspy.Example]:
    """Mark each example with its row's stable corpus id (the rows' `id` column)."""
    for example, example_id in zip(examples, ids, strict=True):
        setattr(example, _ID, str(example_id))
    return examples


def example_id(example: Any) -> str | None:
    return getattr(example, _ID, None)


def capped(text: str) -> str:
    return text if len(text) <= TEXT_CAP else text[: TEXT_CAP - 1] + "…"


def prediction_json(pred: Any) -> str:
    """The program's output fields as a JSON object; a field whose JSON is longer than TEXT_CAP becomes its capped text."""
    fields = pred.toDict() if isinstance(pred, dspy.Prediction) else {"output": pred}
    shown = {}
    for name, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
        shown[name] = capped(text) if isinstance(value, str) or len(text) > TEXT_CAP else json.loads(text)
    return json.dumps(shown, ensure_ascii=False)


def feedback_text(result: Any) -> str | None:
    """The feedback of a metric result (dspy.Prediction or dict with `feedback`); None for a bare score."""
    text = result.get("feedback") if isinstance(result, dict) else getattr(result, "feedback", None)
    return None if text is None else capped(str(text))


def candidate_key(instructions: dict[str, str]) -> str:
    return json.dumps(instructions, sort_keys=True)


def program_instructions(program: dspy.Module) -> dict[str, str]:
    """A program's instructions by predictor name: GEPA's candidate for it."""
    return {name: predictor.signature.instructions for name, predictor in program.named_predictors()}


@dataclass(frozen=True)
class Outcome:
    prediction: str | None  # JSON of the output fields
    feedback: str | None


class RunningProgram(BaseCallback):
    """dspy callback: the program each thread is running (its outermost module call), read by the metric that
    dspy calls next on the same thread."""

    def __init__(self):
        self.local = threading.local()

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if not dspy.settings.caller_modules:  # empty outside any module: this call is the program itself
            self.local.program = instance

    def current(self) -> dspy.Module | None:
        return getattr(self.local, "program", None)


class RecordingMetric:
    """The task metric, recording each whole-program score's outcome keyed by (candidate instructions, example id).
    GEPA's per-predictor feedback calls (pred_name set) are not recorded: they score the same rollouts again.
    `running` must be among dspy's callbacks while programs are scored."""

    def __init__(self, metric: Callable):
        self.metric = metric
        self.running = RunningProgram()
        self._lock = threading.Lock()
        self._outcomes: dict[tuple[str, str], Outcome] = {}

    def __call__(self, gold, pred, trace=None, pred_name=None, pred_trace=None):
        result = self.metric(gold, pred, trace, pred_name, pred_trace)
        program, example = self.running.current(), example_id(gold)
        if pred_name is None and program is not None and example is not None:
            outcome = Outcome(prediction_json(pred), feedback_text(result))
            key = (candidate_key(program_instructions(program)), example)
            with self._lock:
                self._outcomes[key] = outcome
        return result

    def take(self, instructions: dict[str, str], example_ids: Iterable[str]) -> dict[str, Outcome]:
        """Remove and return the outcomes recorded for this candidate on these examples (an example whose
        program failed, or that GEPA answered from its evaluation cache, has none)."""
        key = candidate_key(instructions)
        with self._lock:
            found = ((i, self._outcomes.pop((key, i), None)) for i in example_ids)
            return {i: outcome for i, outcome in found if outcome is not None}

    def clear(self) -> None:
        """Drop what nobody took (train minibatches, candidates GEPA rejected): memory stays bounded."""
        with self._lock:
            self._outcomes.clear()
