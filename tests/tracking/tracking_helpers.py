"""Shared pieces of the tracking and serve tests: a tiny real task and synthetic trial events."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gepa_lab.corpus import ensure_prepared, load_corpus_config, read_manifest, read_split
from gepa_lab.events import EventStream
from gepa_lab.results.stats import bootstrap_ci, paired_bootstrap_ci
from gepa_lab.tasks.task import build_program, resolve_metric, to_examples

SEED_INSTRUCTION = "Classify the sentiment of a product review."
# The simulator reads rules like these out of an instruction (gepa_lab/sim/rules.py).
WINNER_INSTRUCTION = (
    SEED_INSTRUCTION
    + "\n\nChoose exactly one of the allowed labels. Cues learned from feedback ((xN) = seen in N examples):\n"
    + '- If the review mentions "happy", "better", "love", "great" or "perfect", answer positive.\n'
    + '- If the review mentions "okay", "fine", "average" or "not bad", answer neutral.'
)
# the per-example test scores emit_trial reports for the seed and the winner
SEED_TEST = [1.0, 0.0, 1.0, 0.0, 0.0]
WINNER_TEST = [1.0, 1.0, 1.0, 0.0, 0.0]
TASK = {
    "name": "reviews",
    "program": "gepa_lab.tasks.classify:make_program",
    "metric": "gepa_lab.tasks.classify:label_metric",
    "instruction": SEED_INSTRUCTION,
}


def corpus_config() -> dict:
    return load_corpus_config("example_csv").model_dump(mode="json")


def run_config(output_dir: Path, api_key_env: str | None = None, tracking: dict | None = None) -> dict[str, Any]:
    lm = {"kind": "sim", "model": "sim", "api_key_env": api_key_env, "temperature": 0.0, "max_tokens": 256}
    return {
        "output_dir": str(output_dir),
        "corpus": corpus_config(),
        "task": dict(TASK),
        "lm": lm,
        "reflection_lm": dict(lm),
        "optimizer": {"max_metric_calls": 20, "reflection_minibatch_size": 3},  # small batches: iterations fit 20 calls
        "eval": {"test_limit": 5},
        **({"tracking": tracking} if tracking else {}),
    }


def task_parts(cfg: dict):
    from gepa_lab.config.schema import RunConfig

    rc = RunConfig.model_validate(cfg)
    corpus_dir = ensure_prepared(rc.corpus, quiet=True)
    manifest = read_manifest(corpus_dir)
    program = build_program(rc.task, manifest)
    test = to_examples(read_split(corpus_dir, "test"), manifest)
    return program, test, resolve_metric(rc.task.metric), manifest


def save_winner(cfg: dict, path: Path, instruction: str = WINNER_INSTRUCTION) -> dict[str, str]:
    program, *_ = task_parts(cfg)
    for _, predictor in program.named_predictors():
        predictor.signature = predictor.signature.with_instructions(instruction)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return {name: p.signature.instructions for name, p in program.named_predictors()}


def emit_trial(
    events: EventStream, cfg: dict, *, fail: str | None = None, api_base: str = "http://127.0.0.1:9/v1",
    best_val: float = 0.75, best_test: float = 0.6, program_path: Path | None = None, finish: bool = True,
) -> dict[str, Any]:
    """A trial's event sequence as run_trial emits it: 2 iterations, 3 candidates, test evaluations."""
    out = Path(cfg["output_dir"])
    identity = {"config_hash": "cafe0123456789ab", "git_commit": "0123456789abcdef0123456789abcdef01234567",
                "versions": {"dspy": "3.4.1", "mlflow": "3.17.2"}}
    manifest_hash = "f00d" * 16
    events.emit("trial_started", config=cfg, manifest_hash=manifest_hash, **identity)
    events.emit("evaluation", split="test", candidate_idx=0, scores=dict(enumerate(SEED_TEST)))
    seed = {"p": SEED_INSTRUCTION}
    events.emit("candidate", iteration=0, candidate_idx=0, parents=[], instructions=seed, val_score=0.5, metric_calls=6)
    events.emit("evaluation", split="val", candidate_idx=0, scores={i: float(i % 2) for i in range(6)})
    usage = lambda r: {"task": {"requests": r, "cache_hits": 0, "errors": 0, "retries": 0, "prompt_tokens": 100 * r,  # noqa: E731
                                "completion_tokens": 10 * r, "latency_p50_s": 0.01, "latency_p95_s": 0.02, "cost_usd": 0.0},
                       "reflection": {"requests": 1, "cache_hits": 0, "errors": 0, "retries": 0, "prompt_tokens": 500,
                                      "completion_tokens": 80, "latency_p50_s": 0.05, "latency_p95_s": 0.05, "cost_usd": 0.0}}
    events.emit("candidate", iteration=1, candidate_idx=1, parents=[0], instructions={"p": SEED_INSTRUCTION + " v1"}, val_score=0.6, metric_calls=12)
    events.emit("iteration", iteration=1, accepted=True, best_val=0.6, metric_calls=12, seconds=0.5, usage=usage(12))
    if fail:
        events.emit("trial_failed", error=fail, saved_candidates=2, lm_usage={})
        return {}
    events.emit("candidate", iteration=2, candidate_idx=2, parents=[1], instructions={"p": WINNER_INSTRUCTION}, val_score=best_val, metric_calls=19)
    events.emit("iteration", iteration=2, accepted=True, best_val=best_val, metric_calls=19, seconds=1.0, usage=usage(19))
    events.emit("evaluation", split="test", candidate_idx=2, scores=dict(enumerate(WINNER_TEST)))
    program_path = program_path or out / "program.json"
    instructions = save_winner(cfg, program_path)
    summary = {
        "task": cfg["task"]["name"], "corpus": cfg["corpus"]["name"], "corpus_manifest_hash": manifest_hash, **identity,
        "seed_val_score": 0.5, "seed_test_score": 0.4, "best_val_score": best_val, "best_test_score": best_test,
        "best_candidate_idx": 2, "num_candidates": 3, "metric_calls": 19, "lm_calls": 21, "lm_usage": usage(19),
        "best_instructions": instructions,
        "task_lm": {"model": cfg["lm"]["model"], "api_base": api_base, "temperature": cfg["lm"]["temperature"]},
        "program_path": str(program_path), "gepa_log_dir": str(out / "gepa"), "wall_seconds": 1.5,
        "seed_test_ci95": list(bootstrap_ci(SEED_TEST)), "best_test_ci95": list(bootstrap_ci(WINNER_TEST)),
        "test_gain_ci95": list(paired_bootstrap_ci(SEED_TEST, WINNER_TEST)),
    }
    if finish:
        events.emit("trial_finished", summary=summary)
    return summary


def wait_until(predicate, timeout: float = 10.0, every: float = 0.1) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


# ---- one small sweep, tracked and registered, shared by the tracking and serve tests -------------------
CANARY_ENV = "GEPA_LAB_TEST_KEY"
_SWEEP: dict[str, Any] = {}


def canary() -> str:
    """The planted API key of this test session (set in os.environ[CANARY_ENV])."""
    import os
    import uuid

    if not os.environ.get(CANARY_ENV, "").startswith("sk-canary-"):
        os.environ[CANARY_ENV] = f"sk-canary-{uuid.uuid4().hex}"
    return os.environ[CANARY_ENV]


def score_first(program, cfg: dict, api_base: str, n: int = 5) -> float:
    """What a program scores on the first n test examples against a live LM (in this process, no cache)."""
    import os

    import dspy

    _, test, metric, _ = task_parts(cfg)
    lm = dspy.LM("openai/sim", api_base=api_base, api_key=os.environ[CANARY_ENV], cache=False, temperature=0.0, max_tokens=256)
    with dspy.context(lm=lm):
        scores = [float(getattr(r := metric(ex, program(**ex.inputs())), "score", r)) for ex in test[:n]]
    return sum(scores) / len(scores)


def tracked_sweep(tmp_root: Path) -> dict[str, Any]:
    """A sweep on the embedded store (SQLite + artifacts in output_dir) with W&B offline: parent run, one
    completed and one failed trial (synthetic events, real sinks), the winner registered in the project registry
    (tmp_root/registry.db) with a load-back check against the simulator (which demands the canary key), then a
    second sweep's registration of the same program whose load-back check must fail (dead endpoint). Computed once
    per test session."""
    if _SWEEP:
        return _SWEEP
    import dspy

    from gepa_lab.config.schema import MlflowConfig, WandbConfig
    from gepa_lab.servers.process import free_port
    from gepa_lab.servers.simulator import start_simulator
    from gepa_lab.tracking import mlflow_sink, registry, wandb_sink

    key = canary()
    out, other = tmp_root / "sweep", tmp_root / "sweep-dead-endpoint"
    out.mkdir(parents=True)
    other.mkdir()
    mcfg, wcfg = MlflowConfig(), WandbConfig()
    parent = mlflow_sink.start_parent_run(mcfg, out, "test-sweep", {"sweep": {"name": "test-sweep", "api_key": key, "n": 2}})
    cfgs = {t: run_config(out / "trials" / t, api_key_env=CANARY_ENV) for t in ("t_ok", "t_failed")}
    with start_simulator(model="sim", api_key=key) as sim:
        for trial_id, cfg in cfgs.items():
            sinks = [
                wandb_sink.WandbSink(wcfg, out, group="test-sweep", run_name=trial_id, config={"params": {"lm.temperature": 0.0}, **cfg}),
                mlflow_sink.MlflowSink(mcfg, out, parent, run_name=trial_id),
            ]
            events = EventStream(trial_id, sinks)
            if trial_id == "t_ok":
                summary = emit_trial(events, cfg, api_base=sim.url)
            else:
                emit_trial(events, cfg, fail=f"RuntimeError: LM said no (key {key})")
            for sink in sinks:
                sink.finish()
            assert not events.failures, f"sinks failed: {events.failures}"
        winner_cfg = cfgs["t_ok"]
        program, *_ = task_parts(winner_cfg)
        seed_score = score_first(program, winner_cfg, sim.url)
        program.load(summary["program_path"])
        winner_score = score_first(program, winner_cfg, sim.url)
        test_scores = {str(i): s for i, s in enumerate(WINNER_TEST)}
        # a live LM holding the key in dspy.settings while logging: it must not end up in the pickle
        keyed_lm = dspy.LM("openai/sim", api_base=sim.url, api_key=key)
        with dspy.context(lm=keyed_lm):
            registered = registry.register_winner(mcfg, out, parent, summary, winner_cfg, load_back={"api_base": sim.url},
                                                  test_scores=test_scores)
            other_parent = mlflow_sink.start_parent_run(mcfg, other, "other-sweep", {"sweep": {"name": "other-sweep"}})
            rejected = registry.register_winner(
                mcfg, other, other_parent, summary, winner_cfg, load_back={"api_base": f"http://127.0.0.1:{free_port()}/v1"},
                test_scores=test_scores,
            )
    mlflow_sink.end_parent_run(mcfg, out, parent, {"best_val_score": summary["best_val_score"], "registered_model": registered,
                                                   "best_test_ci95": summary["best_test_ci95"]})
    _SWEEP.update(out=out, parent=parent, cfgs=cfgs, summary=summary, registered=registered, rejected=rejected,
                  seed_score=seed_score, winner_score=winner_score, mlflow=mcfg, key=key, test_scores=test_scores,
                  tracking_uri=mlflow_sink.tracking_uri(mcfg, out), registry_uri=registry.registry_uri(mcfg, out))
    return _SWEEP


def register_in_new_sweep(root: Path, sweep_name: str, test_scores: dict[str, float], api_base: str, promote=None,
                          mcfg=None, best_test: float | None = None) -> dict[str, Any]:
    """The tracked sweep's winner registered again, as the winner of a new sweep folder root/sweep_name whose results
    record that trial (t_ok) with `test_scores` (its per-example test scores) and best_test (their mean by default).
    promote: register_winner's promotion (default: its own)."""
    from gepa_lab.config.schema import MlflowConfig
    from gepa_lab.results.writer import write_table
    from gepa_lab.tracking import mlflow_sink, registry

    mcfg = mcfg or MlflowConfig()
    sweep = _SWEEP
    assert sweep, "needs the session's tracked sweep (the sweep fixture) first"
    out = root / sweep_name
    out.mkdir(parents=True)
    best_test = sum(test_scores.values()) / len(test_scores) if best_test is None else best_test
    write_table(out / "results" / "trials" / "t_ok.parquet", "trials", [{
        "sweep_id": sweep_name, "trial_id": "t_ok", "status": "completed", "best_val_score": 0.75,
        "best_test_score": best_test, "metric_calls": 19}])
    parent = mlflow_sink.start_parent_run(mcfg, out, sweep_name, {"sweep": {"name": sweep_name}})
    kwargs = {"promote": promote} if promote else {}
    return registry.register_winner(mcfg, out, parent, {**sweep["summary"], "best_test_score": best_test}, sweep["cfgs"]["t_ok"],
                                    load_back={"api_base": api_base, "n": 1}, test_scores=test_scores, **kwargs)


def scores(correct: int, n: int = 20) -> dict[str, float]:
    """Per-example test scores over ids 0..n-1: the first `correct` right."""
    return {str(i): float(i < correct) for i in range(n)}
