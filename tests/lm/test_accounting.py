"""LM accounting agrees with the simulator's own /stats: per role, attempts == requests the server received,
attempts - retries == requests - cache hits, and token totals match; across Evaluate's worker threads."""
from __future__ import annotations

import os
from typing import Literal

import dspy
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gepa_lab.lm.accounting import UsageMeter, merge_usage  # noqa: E402
from gepa_lab.lm.cache import use_cache  # noqa: E402
from gepa_lab.lm.config import LMConfig  # noqa: E402
from gepa_lab.lm.endpoint import build_lm  # noqa: E402
from gepa_lab.servers.simulator import start_simulator  # noqa: E402

pytestmark = pytest.mark.timeout(180)


class Intent(dspy.Signature):
    """Classify the customer message."""

    text: str = dspy.InputField()
    label: Literal["card_lost", "refund", "balance"] = dspy.OutputField()


def _examples(n: int, distinct: int):
    texts = ["I lost my card", "I want my money back", "how much is on my account", "card stolen yesterday",
             "refund the payment", "what's my balance"]
    return [dspy.Example(text=f"{texts[i % len(texts)]} #{i % distinct}", label="refund").with_inputs("text") for i in range(n)]


def test_accounting_matches_simulator_stats(tmp_path):
    use_cache(tmp_path, mode="memory")  # cache hits come from repeated examples
    # faults on both servers: 500s and 429s (Retry-After 50 ms) -> errors and retries
    with start_simulator(error_rate=0.15, rate_limit_rate=0.15, retry_after_s=0.05, latency_ms=5, seed=7) as task_sim, \
         start_simulator(error_rate=0.5, seed=8) as refl_sim:
        task_cfg = LMConfig(kind="sim", model="sim", num_retries=12, retry_backoff_s=0.01,
                            price_per_1k_prompt_tokens=0.5, price_per_1k_completion_tokens=2.0)
        refl_cfg = LMConfig(kind="sim", model="sim", num_retries=12, retry_backoff_s=0.01, temperature=0.5)
        task_lm = build_lm(task_cfg, task_sim.url, role="task")
        refl_lm = build_lm(refl_cfg, refl_sim.url, role="reflection", seed=3)
        meter = UsageMeter({"task": task_lm, "reflection": refl_lm}, prices={"task": task_cfg, "reflection": refl_cfg})
        program = dspy.Predict(Intent)
        devset = _examples(36, distinct=12)  # 12 distinct inputs, each asked 3 times
        with dspy.context(lm=task_lm, callbacks=[*dspy.settings.callbacks, meter]):
            dspy.Evaluate(devset=devset, metric=lambda g, p, t=None: 1.0, num_threads=6, display_progress=False)(program)
            for i in range(8):  # reflection-role calls, each asked twice (cache hits)
                refl_lm(f"Propose a better instruction, take {i % 4}")
            copy = task_lm.copy(rollout_id=9, temperature=0.3)  # a copy still counts as the task LM
            copy("one more task call")

        snap = meter.snapshot()
        for role, sim in (("task", task_sim), ("reflection", refl_sim)):
            s = snap[role]
            st = sim.stats()
            assert s["attempts"] == st["requests_received"], (role, s, st)
            assert s["requests"] - s["cache_hits"] - s["failed_requests"] == st["requests_served"], (role, s, st)
            assert s["attempts"] - s["retries"] == s["server_requests"] == s["requests"] - s["cache_hits"]
            assert s["errors"] == st["errors_total"], (role, s, st)
            assert s["prompt_tokens"] == st["prompt_tokens"] and s["completion_tokens"] == st["completion_tokens"]
            assert s["retries"] > 0 and s["cache_hits"] > 0 and s["failed_requests"] == 0
            assert 0 < s["latency_p50_s"] <= s["latency_p95_s"] <= s["latency_max_s"]
        assert snap["task"]["requests"] == 36 + 1
        assert snap["reflection"]["requests"] == 8 and snap["reflection"]["cache_hits"] == 4
        t = snap["task"]
        assert t["cost_usd"] == pytest.approx(t["prompt_tokens"] / 1000 * 0.5 + t["completion_tokens"] / 1000 * 2.0)
        assert snap["reflection"]["cost_usd"] == 0.0

        total = merge_usage([snap, snap])
        assert total["task"]["requests"] == 2 * t["requests"] and total["task"]["prompt_tokens"] == 2 * t["prompt_tokens"]
        assert total["task"]["latency_p50_s"] == pytest.approx(t["latency_p50_s"])


def test_failed_calls_and_unknown_lms(tmp_path):
    use_cache(tmp_path, mode="off")
    with start_simulator(error_rate=1.0) as sim:
        lm = build_lm(LMConfig(kind="sim", model="sim", num_retries=2, retry_backoff_s=0.01), sim.url)
        other = build_lm(LMConfig(kind="sim", model="sim", num_retries=2, retry_backoff_s=0.01), sim.url)  # not registered with the meter
        meter = UsageMeter({"task": lm})
        with dspy.context(callbacks=[meter]):
            with pytest.raises(Exception, match="HTTP 500"):
                lm("always fails")
            with pytest.raises(Exception):
                other("not counted")
        s = meter.snapshot()["task"]
        assert s["requests"] == 1 and s["failed_requests"] == 1 and s["cache_hits"] == 0
        assert s["attempts"] == 3 and s["errors"] == 3 and s["retries"] == 2
        assert sim.stats()["requests_received"] == 3 + 3
        assert set(meter.snapshot()) == {"task"}
