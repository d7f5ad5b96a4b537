"""What the metric said about each example (the program's prediction and the feedback), recorded where the metric
is called: GEPA's events carry each candidate's scores, not the feedback text.

Which candidate is being scored: dspy calls a program and then the metric on the same thread, one example after
another (dspy.Evaluate's workers, GEPA's trace capture), and GEPA builds one program per candidate with that
candidate's instructions. So a dspy callback notes, per thread, the outermost module call (the program), and the
metric wrapper keys what it records by that program's instructions and the example's corpus id. GEPA's
valset-evaluated event names a candidate by its instructions: the trial takes that candidate's records then.

The same two hooks count the user's code that raised (UserCodeErrors): the program (its outermost call ended with an
exception) and the metric. dspy scores such an example optimizer.failure_score and goes on; an LM that failed for
good (dspy's DSPyError: transport, rate limit, unparsable reply) is not the user's code and is not counted here."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import dspy
from dspy.utils.callback import BaseCallback
from dspy.utils.exceptions import DSPyError

from gepa_lab.errors import GepaLabError

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


class UserCodeError(GepaLabError):
    """The task's program or metric raised on every example of the seed program's evaluation."""


def is_user_code_error(exc: BaseException) -> bool:
    """An exception of the user's program or metric, not of the LM behind it (dspy raises DSPyError for those)."""
    return isinstance(exc, Exception) and not isinstance(exc, DSPyError)


def describe(exc: BaseException) -> str:
    """'Type: message' on one line, capped (an exception's message may span a page)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


@dataclass(frozen=True)
class Raised:
    """The user's code raised on an example: where ("program" or "metric"), on which (None: not known where the
    program was called by GEPA), and what."""
    where: str
    example_id: str | None
    error: str


class UserCodeErrors:
    """How many calls of the program and of the metric raised, and the first that did."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0
        self.first: Raised | None = None

    def record(self, raised: Raised) -> None:
        with self._lock:
            self.count += 1
            self.first = self.first or raised


@dataclass(frozen=True)
class Outcome:
    prediction: str | None  # JSON of the output fields
    feedback: str | None


class RunningProgram(BaseCallback):
    """dspy callback: the program each thread is running (its outermost module call), read by the metric that
    dspy calls next on the same thread; a program call that raised is counted in `errors`."""

    def __init__(self, errors: UserCodeErrors):
        self.local = threading.local()
        self.errors = errors

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if not dspy.settings.caller_modules:  # empty outside any module: this call is the program itself
            self.local.program = instance
            self.local.call_id = call_id

    def on_module_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        if exception is not None and call_id == getattr(self.local, "call_id", None) and is_user_code_error(exception):
            self.errors.record(Raised("program", None, describe(exception)))

    def current(self) -> dspy.Module | None:
        return getattr(self.local, "program", None)


class RecordingMetric:
    """The task metric, recording each whole-program score's outcome keyed by (candidate instructions, example id).
    GEPA's per-predictor feedback calls (pred_name set) are not recorded: they score the same rollouts again.
    `running` must be among dspy's callbacks while programs are scored. `errors` counts the calls of the program and
    of the metric that raised (feedback calls included)."""

    def __init__(self, metric: Callable):
        self.metric = metric
        self.errors = UserCodeErrors()
        self.running = RunningProgram(self.errors)
        self._lock = threading.Lock()
        self._outcomes: dict[tuple[str, str], Outcome] = {}

    def __call__(self, gold, pred, trace=None, pred_name=None, pred_trace=None):
        try:
            result = self.metric(gold, pred, trace, pred_name, pred_trace)
        except Exception as e:
            if is_user_code_error(e):
                self.errors.record(Raised("metric", example_id(gold), describe(e)))
            raise  # dspy scores the example optimizer.failure_score
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
