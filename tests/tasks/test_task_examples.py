"""Examples carry every column a corpus declares (inputs, answers, extras); program factories get each answer's
label set; the built-in classification program and metric handle one answer as before and several per field."""
from __future__ import annotations

import csv
from pathlib import Path

import dspy
import pytest

from gepa_lab.corpus import load_corpus_config, prepare, read_manifest, read_split
from gepa_lab.tasks.classify import label_metric
from gepa_lab.tasks.imports import ImportPathError
from gepa_lab.tasks.math import numeric_metric
from gepa_lab.tasks.task import TaskConfig, build_program, to_examples

AREAS = ["billing", "shipping", "account"]


def corpus(tmp_path: Path, **changes) -> dict:
    """A prepared two-answer corpus with an extra column; returns its manifest (rows: manifest['dir'])."""
    data = tmp_path / "support.csv"
    with data.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["msg", "area", "urgency", "note"])
        w.writeheader()
        w.writerows({"msg": f"message {i} about {AREAS[i % 3]}", "area": AREAS[i % 3],
                     "urgency": "high" if i % 4 == 0 else "low", "note": f"note {i}"} for i in range(30))
    cfg = {"name": "support", "source": {"files": str(data)}, "inputs": {"text": "msg"},
           "answer": {"area": "area", "urgency": "urgency"}, "extras": {"note": "note"}, "kind": "classification",
           "splits": {"train": 12, "val": 6, "test": 6}, **changes}
    out = prepare(load_corpus_config(cfg), tmp_path / "corpora", quiet=True)
    return {**read_manifest(out), "dir": out}


def task(program: str, metric: str = "gepa_lab.tasks.classify:label_metric") -> TaskConfig:
    return TaskConfig(name="t", program=program, metric=metric, instruction="Sort the support message.")


def test_examples_hold_inputs_answers_and_extras(tmp_path):
    manifest = corpus(tmp_path)
    rows = read_split(manifest["dir"], "train")
    examples = to_examples(rows, manifest)
    first = examples[0]
    assert set(first.inputs().keys()) == {"text"}
    assert set(first.labels().keys()) == {"area", "urgency", "note"}  # answers and extras; the row id stays out
    assert (first.area, first.urgency, first.note) == (rows[0]["area"], rows[0]["urgency"], rows[0]["note"])


def test_builtin_program_gets_one_literal_output_per_answer_and_scores_each(tmp_path):
    manifest = corpus(tmp_path)
    program = build_program(task("gepa_lab.tasks.classify:make_program"), manifest)
    outputs = program.signature.output_fields
    assert list(outputs) == ["area", "urgency"]
    assert set(outputs["area"].annotation.__args__) == set(AREAS)
    assert set(outputs["urgency"].annotation.__args__) == {"high", "low"}

    gold = to_examples(read_split(manifest["dir"], "test"), manifest)[0]
    wrong_urgency = "low" if gold.urgency == "high" else "high"
    result = label_metric(gold, dspy.Prediction(area=gold.area, urgency=wrong_urgency))
    assert result.score == 0.5
    assert f'The area is correct: "{gold.area}".' in result.feedback
    assert f'you answered "{wrong_urgency}"; the correct urgency is "{gold.urgency}".' in result.feedback
    assert label_metric(gold, dspy.Prediction(area=gold.area, urgency=gold.urgency)).score == 1.0


def test_single_answer_metric_wording_is_unchanged_and_extras_are_not_scored():
    gold = dspy.Example(query="where is my card", intent="card_arrival", note="x").with_inputs("query")
    assert label_metric(gold, dspy.Prediction(intent="card_arrival")).feedback == 'Correct. The correct answer is "card_arrival".'
    wrong = label_metric(gold, dspy.Prediction(intent="pin_blocked"))
    assert (wrong.score, wrong.feedback) == (0.0, 'Incorrect: you answered "pin_blocked". The correct answer is "card_arrival".')
    math_gold = dspy.Example(question="2+2?", answer="4", solution="2+2=4 #### 4").with_inputs("question")
    assert numeric_metric(math_gold, dspy.Prediction(reasoning="", answer=4.0)).score == 1.0


def test_a_factory_naming_one_answer_on_a_corpus_with_several_is_one_line(tmp_path):
    manifest = corpus(tmp_path)
    with pytest.raises(ImportPathError) as err:
        build_program(task("tests.tasks.test_task_examples:one_answer_factory"), manifest)
    assert "takes answer and labels, which name one answer" in str(err.value) and "area, urgency" in str(err.value)
    assert "\n" not in str(err.value)


def one_answer_factory(inputs, answer, labels, instruction):
    raise AssertionError("never called on a corpus with several answers")


def test_factories_receive_every_answer_and_label_set(tmp_path):
    manifest = corpus(tmp_path, labels={"urgency": ["low", "high"]})
    received = build_program(task("tests.tasks.test_task_examples:recording_factory"), manifest).received
    assert received == {"inputs": ["text"], "answers": ["area", "urgency"], "extras": ["note"],
                        "label_sets": {"area": sorted(AREAS), "urgency": ["low", "high"]}}


def recording_factory(inputs, answers, label_sets, extras):
    program = dspy.Predict("text -> area, urgency")
    program.received = {"inputs": inputs, "answers": answers, "extras": extras, "label_sets": label_sets}
    return program
