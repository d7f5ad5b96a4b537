"""A tiny GEPA compile end to end on a real LM on CPU: llama.cpp's server (the `cpu-lm` extra) on Gemma 3
270M, started by gepa_lab from conf/lm/llamacpp.yaml, output constrained to each signature's JSON schema so
dspy parses it. Never skipped: without the extra this fails, saying what to install. A base model scores
low; the point is the real path (real tokenizer, sampler, HTTP, accounting, a real reflection proposal)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

import dspy
import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gepa_lab.lm.accounting import UsageMeter  # noqa: E402
from gepa_lab.lm.cache import use_cache  # noqa: E402
from gepa_lab.lm.config import LMConfig  # noqa: E402
from gepa_lab.lm.endpoint import build_lm  # noqa: E402
from gepa_lab.servers.serving import serve_all  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
CONF = Path(__file__).resolve().parents[2] / "conf" / "lm" / "llamacpp.yaml"


class Sentiment(dspy.Signature):
    """Say whether the movie review is positive or negative."""

    review: str = dspy.InputField()
    label: Literal["positive", "negative"] = dspy.OutputField()


DATA = [
    ("A wonderful, moving film. I loved every minute.", "positive"),
    ("Boring and far too long. I walked out.", "negative"),
    ("The acting was superb and the story gripping.", "positive"),
    ("A total waste of money, dull from start to end.", "negative"),
    ("Great fun for the whole family!", "positive"),
    ("Awful script, terrible dialogue.", "negative"),
    ("One of the best movies this year.", "positive"),
]


class Proposals:
    """GEPA callback: what the reflection LM proposed."""

    def __init__(self):
        self.proposals: list[dict[str, str]] = []

    def on_proposal_end(self, event):
        self.proposals.append(dict(event["new_instructions"]))


def test_tiny_gepa_compile_on_gemma_through_llamacpp(tmp_path):
    started = time.monotonic()
    use_cache(tmp_path, mode="off")
    base = LMConfig(**yaml.safe_load(CONF.read_text()))
    task_cfg = base.model_copy(update={"max_tokens": 32})
    # the reflection reply is held to a short JSON string, so it ends well inside max_tokens
    reflection_cfg = base.model_copy(update={"max_tokens": 160, "extra_body": {"response_format": {
        "type": "json_object",
        "schema": {"type": "object", "properties": {"new_instruction": {"type": "string", "minLength": 10, "maxLength": 280}},
                   "required": ["new_instruction"]}}}})
    parsed: list[str] = []

    def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        label = getattr(pred, "label", None)
        if label in ("positive", "negative"):
            parsed.append(label)
        ok = float(label == gold.label)
        return dspy.Prediction(score=ok, feedback="Correct." if ok else f"Wrong: the review is {gold.label}, not {label}.")

    examples = [dspy.Example(review=r, label=y).with_inputs("review") for r, y in DATA]
    proposals = Proposals()
    with serve_all({"task": task_cfg, "reflection": reflection_cfg}, workdir=tmp_path / "lm") as eps:
        assert eps["task"].api_base == eps["reflection"].api_base  # one llama.cpp server for both roles
        task_lm = build_lm(task_cfg, eps["task"].api_base, role="task")
        reflection_lm = build_lm(reflection_cfg, eps["reflection"].api_base, role="reflection")
        meter = UsageMeter({"task": task_lm, "reflection": reflection_lm})
        gepa = dspy.GEPA(metric=metric, max_metric_calls=10, reflection_lm=reflection_lm, reflection_minibatch_size=2,
                         skip_perfect_score=False, use_merge=False, num_threads=2, seed=0, track_stats=True,
                         gepa_kwargs={"callbacks": [proposals]})
        with dspy.context(lm=task_lm, adapter=dspy.JSONAdapter(), callbacks=[*dspy.settings.callbacks, meter]):
            best = gepa.compile(dspy.Predict(Sentiment), trainset=examples[:4], valset=examples[4:])
        usage = meter.snapshot()

    elapsed = time.monotonic() - started
    assert len(parsed) >= 5, parsed  # the constrained base model's replies parse into labels
    assert proposals.proposals and all(any(v.strip() for v in p.values()) for p in proposals.proposals), proposals.proposals
    assert usage["reflection"]["requests"] >= 1 and usage["reflection"]["failed_requests"] == 0
    assert usage["task"]["server_requests"] >= 5 and usage["task"]["prompt_tokens"] > 0 and usage["task"]["completion_tokens"] > 0
    assert best.detailed_results.total_metric_calls >= 5
    assert elapsed < 300, f"took {elapsed:.0f}s"
    print(f"\nllama.cpp GEPA: {elapsed:.0f}s, {len(parsed)} parsed predictions, proposals: {proposals.proposals}, "
          f"val scores {best.detailed_results.val_aggregate_scores}, usage {usage}")
