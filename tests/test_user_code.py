"""A user's program or metric that raises (tests/support/failing_code.py, by import path): on some examples they
score optimizer.failure_score and are counted (summary.json, the trials table); on every example of the seed's
evaluation the run stops before GEPA with one line naming the import path, the example and the exception."""
import json
import re

import dspy
import pytest

from gepa_lab.corpus import read_split
from gepa_lab.lm.config import LMConfig
from gepa_lab.lm.endpoint import build_lm
from gepa_lab.servers.process import free_port
from gepa_lab.tasks.outcomes import RecordingMetric, with_ids
from gepa_lab.trial import evaluate
from tests.conftest import ROOT, run_cli
from tests.support import failing_code
from tests.support.processes import tagged_env, tagged_processes
from tests.support.corpus import TINY_CORPUS

SUPPORT = "tests.support.failing_code"


def raises(query: str) -> bool:
    return failing_code.program_raises_on(query) or failing_code.metric_raises_on(query)


class Echo(dspy.Module):
    """A program without an LM (the bookkeeping is under test): raises where the user's failing program does."""

    def forward(self, query):
        if failing_code.program_raises_on(query):
            raise ValueError("cannot route it")
        return dspy.Prediction(intent=query)


def test_evaluate_scores_user_code_that_raises_as_failure_score_and_counts_it_but_not_an_lm_that_fails():
    queries = [f"query {i}" for i in range(24)]
    examples = with_ids([dspy.Example(query=q, intent=q).with_inputs("query") for q in queries],
                        [f"id-{i}" for i in range(24)])
    metric = RecordingMetric(failing_code.metric_raising_on_some)
    with dspy.context(callbacks=[metric.running]):
        mean, scores, raised = evaluate(Echo(), examples, metric, threads=4, failure_score=-1.0)
    expected = [("program" if failing_code.program_raises_on(q) else "metric", f"id-{i}")
                for i, q in enumerate(queries) if raises(q)]
    assert {where for where, _ in expected} == {"program", "metric"} and len(expected) < len(queries)
    assert [(r.where, r.example_id) for r in raised] == expected  # in example order
    assert {r.error for r in raised} == {"ValueError: cannot route it", "KeyError: 'customer_tier'"}
    assert scores == [-1.0 if raises(q) else 1.0 for q in queries]  # failure_score; the others are right
    assert mean == pytest.approx(sum(scores) / 24)
    assert metric.errors.count == len(expected)  # each raise counted once: the program's by dspy's callback

    # an LM that does not answer is not the user's code: not counted, not in `raised`
    dead = build_lm(LMConfig(kind="sim", model="sim", num_retries=0), f"http://127.0.0.1:{free_port()}/v1", role="task")
    with dspy.context(lm=dead, callbacks=[metric.running]):
        _, scores, raised = evaluate(dspy.Predict("query -> intent"), examples[:3], metric, threads=1, failure_score=-1.0)
    assert scores == [-1.0] * 3 and raised == [] and metric.errors.count == len(expected)


def test_a_program_and_metric_that_raise_on_some_examples_score_failure_score_and_are_counted(tmp_path, simulator):
    out = tmp_path / "some"
    done = run_cli("gepa_lab.run", "task=banking77", "tracking=none", f"output_dir={out}", *TINY_CORPUS,
                   f"task.program={SUPPORT}:program_raising_on_some", f"task.metric={SUPPORT}:metric_raising_on_some",
                   "optimizer.failure_score=-1", "optimizer.max_metric_calls=60", "optimizer.reflection_minibatch_size=4",
                   f"lm.api_base={simulator.url}", f"reflection_lm.api_base={simulator.url}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["user_code_errors"] > 0
    assert re.search(rf"your program or metric raised\s+{summary['user_code_errors']}\s+times", done.stdout), done.stdout
    assert summary["first_user_code_error"].startswith(f"task.program {SUPPORT}:program_raising_on_some") or \
        summary["first_user_code_error"].startswith(f"task.metric {SUPPORT}:metric_raising_on_some")

    from gepa_lab.results.query import open_results

    con = open_results(out)
    assert con.execute("SELECT user_code_errors FROM trials").fetchall() == [(summary["user_code_errors"],)]
    queries = {row["id"]: row["query"] for split in ("val", "test")
               for row in read_split(ROOT / "corpora" / "banking77_tiny", split)}
    rows = con.execute("SELECT split, example_id, score FROM evaluations").fetchall()
    assert {split for split, example_id, _ in rows if raises(queries[example_id])} == {"val", "test"}
    for split, example_id, score in rows:  # optimizer.failure_score, on val (GEPA's) and test (the trial's own)
        assert score == -1.0 if raises(queries[example_id]) else score in (0.0, 1.0), (split, example_id, score)


def test_a_metric_that_raises_on_every_seed_example_stops_the_run_before_gepa_in_one_line(tmp_path):
    out = tmp_path / "every"
    tag, env = tagged_env()
    done = run_cli("gepa_lab.run", "task=banking77", "tracking=none", f"output_dir={out}", *TINY_CORPUS,
                   f"task.metric={SUPPORT}:metric_reading_a_missing_field", "optimizer.max_metric_calls=60",
                   "optimizer.reflection_minibatch_size=4", env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert f"task.metric {SUPPORT}:metric_reading_a_missing_field" in line and "so GEPA was not started" in line
    assert "AttributeError: 'Example' object has no attribute 'customer_tier'" in line
    test_ids = {row["id"] for row in read_split(ROOT / "corpora" / "banking77_tiny", "test")}
    assert any(f"on example {example_id}:" in line for example_id in test_ids), line
    assert "Traceback" not in done.stderr
    assert not (out / "gepa" / "gepa_state.bin").exists() and not (out / "summary.json").exists()
    assert not tagged_processes(tag, "gepa_lab.sim"), "the run left its simulator running"
    from gepa_lab.results.query import open_results

    [(status, error)] = open_results(out).execute("SELECT status, error FROM trials").fetchall()
    assert status == "failed" and "customer_tier" in error
