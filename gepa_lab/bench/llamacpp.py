"""The real CPU LM (issue 16, item 7): seconds and LM calls per prediction of the banking77 program on llama.cpp
(Gemma 3 270M, `lm=llamacpp` as conf/lm/llamacpp.yaml sets it), with dspy's ChatAdapter (before: its first,
unconstrained call runs to max_tokens, then it falls back to the JSONAdapter) and with the adapter the config
chooses (after: `adapter: json`, the schema-constrained reply from the first call)."""
from __future__ import annotations

import tempfile
import time
from typing import Any


def llamacpp_adapters(predictions: int, overrides: tuple[str, ...] = ("task=banking77",)) -> dict[str, Any]:
    """overrides: the run's, over `lm=llamacpp` (the task; --quick: a lower lm.max_tokens, so 'before' wastes less)."""
    import dspy

    from gepa_lab.bench.hops import task_program
    from gepa_lab.compose import compose
    from gepa_lab.config.schema import RunConfig
    from gepa_lab.lm.accounting import UsageMeter
    from gepa_lab.lm.endpoint import build_lm
    from gepa_lab.servers.llamacpp import start_llamacpp

    run_overrides = ("lm=llamacpp", *overrides)
    cfg = RunConfig.model_validate(compose("run", [*run_overrides, "output_dir=/tmp/gepa-lab-bench-unused"])).lm
    program, field, queries = task_program(run_overrides)
    out: dict[str, Any] = {"model": cfg.model, "max_tokens": cfg.max_tokens, "predictions": predictions, "overrides": list(overrides),
                           "adapter_after": cfg.adapter}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_llamacpp(cfg, log_dir=tmp)
        try:
            lm = build_lm(cfg, server.url, role="task")
            lm.cache = False
            # "after" first: the first requests pay for a cold server, so the gain is not flattered
            for label, adapter in (("after", cfg.dspy_adapter()), ("before", dspy.ChatAdapter())):
                meter = UsageMeter({"task": lm})
                started = time.perf_counter()
                with dspy.context(lm=lm, adapter=adapter, callbacks=[meter]):
                    answers = [program(**{field: q}) for q in queries[:predictions]]
                seconds = time.perf_counter() - started
                usage = meter.snapshot()["task"]
                out[f"s_per_prediction_{label}"] = round(seconds / predictions, 3)
                out[f"lm_calls_per_prediction_{label}"] = round(usage["requests"] / predictions, 2)
                out[f"completion_tokens_per_prediction_{label}"] = round(usage["completion_tokens"] / predictions, 1)
                out[f"answered_{label}"] = sum(a is not None for a in answers)
        finally:
            server.stop()
    out["speedup"] = round(out["s_per_prediction_before"] / out["s_per_prediction_after"], 2)
    return out
