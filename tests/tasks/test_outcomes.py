"""gepa_lab.tasks.outcomes: the task metric records each example's prediction and feedback under the candidate whose
program was scored, also when several programs are scored at once on many threads, as GEPA does."""
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context

import dspy

from gepa_lab.tasks.outcomes import TEXT_CAP, RecordingMetric, program_instructions, with_ids


class Shout(dspy.Module):
    """A module inside the program: its call must not be taken for the program's."""

    def forward(self, text):
        return dspy.Prediction(text=text.upper())


class Tagger(dspy.Module):
    """A program whose prediction names its own instruction (no LM: what is under test is the bookkeeping)."""

    def __init__(self, instruction: str):
        super().__init__()
        self.tag = dspy.Predict(dspy.Signature("text -> label", instruction))
        self.shout = Shout()

    def forward(self, text):
        time.sleep(random.random() / 500)  # the threads interleave
        loud = self.shout(text=text).text
        return dspy.Prediction(label=f"{self.tag.signature.instructions}|{loud}", tokens=[loud, len(loud)])


def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    return dspy.Prediction(score=1.0, feedback=f"feedback on {gold.text} for {pred.label}")


def examples(n: int) -> list[dspy.Example]:
    return with_ids([dspy.Example(text=f"t{i}").with_inputs("text") for i in range(n)], [f"id-{i}" for i in range(n)])


def test_outcomes_are_keyed_by_candidate_and_example_under_threads():
    devset = examples(40)
    recorder = RecordingMetric(metric)
    programs = [Tagger(f"instruction {k}") for k in range(4)]

    def evaluate(program):  # as GEPA's DspyAdapter.evaluate scores a candidate: dspy.Evaluate on its own threads
        return dspy.Evaluate(devset=devset, metric=recorder, num_threads=4, display_progress=False)(program)

    with dspy.context(callbacks=[recorder.running]), ThreadPoolExecutor(max_workers=4) as pool:
        # several candidates at once, each under a copy of the caller's context (GEPA's batch_evaluate)
        work = [(copy_context(), program) for program in programs]
        list(pool.map(lambda item: item[0].run(evaluate, item[1]), work))

    ids = [f"id-{i}" for i in range(40)]
    for k, program in enumerate(programs):
        outcomes = recorder.take(program_instructions(program), ids)
        assert sorted(outcomes) == sorted(ids), k
        for i in range(40):
            outcome = outcomes[f"id-{i}"]
            label = f"instruction {k}|T{i}"
            assert json.loads(outcome.prediction) == {"label": label, "tokens": [f"T{i}", len(f"T{i}")]}
            assert outcome.feedback == f"feedback on t{i} for {label}"
        assert recorder.take(program_instructions(program), ids) == {}  # taken once


def test_gepa_per_predictor_calls_and_unknown_examples_are_not_recorded_and_clear_drops_the_rest():
    recorder = RecordingMetric(metric)
    program = Tagger("only")
    [example] = examples(1)
    with dspy.context(callbacks=[recorder.running]):
        pred = program(**example.inputs())
        recorder(example, pred, None, "tag", [])  # GEPA asking for one predictor's feedback: the same rollout again
        recorder(dspy.Example(text="t0").with_inputs("text"), pred)  # an example without a corpus id
    assert recorder.take(program_instructions(program), ["id-0"]) == {}
    with dspy.context(callbacks=[recorder.running]):
        recorder(example, program(**example.inputs()))
    recorder.clear()
    assert recorder.take(program_instructions(program), ["id-0"]) == {}


def test_stored_text_is_capped_and_the_prediction_stays_json():
    long = "x" * (3 * TEXT_CAP)
    recorder = RecordingMetric(lambda gold, pred, *rest: {"score": 0.0, "feedback": long})
    program = Tagger("caps")
    [example] = with_ids([dspy.Example(text=long).with_inputs("text")], ["id-long"])
    with dspy.context(callbacks=[recorder.running]):
        recorder(example, program(**example.inputs()))
    outcome = recorder.take(program_instructions(program), ["id-long"])["id-long"]
    assert len(outcome.feedback) == TEXT_CAP and outcome.feedback.endswith("…")
    fields = json.loads(outcome.prediction)
    assert len(fields["label"]) == TEXT_CAP and fields["label"].startswith("caps|XXX")
    assert isinstance(fields["tokens"], str) and len(fields["tokens"]) == TEXT_CAP  # too long as JSON: its capped text
