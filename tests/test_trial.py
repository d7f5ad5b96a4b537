"""gepa_lab.trial.make_optimizer: every GEPA knob of OptimizerConfig reaches dspy.GEPA under its own name, and
the compile keeps its NoOvershoot stop and our callbacks."""
import dspy

from gepa_lab.config.schema import OptimizerConfig, RunConfig
from gepa_lab.trial import NoOvershoot, load_task, make_optimizer
from tests.tracking.tracking_helpers import run_config

OURS = {"strict_budget", "gepa_kwargs"}  # OptimizerConfig fields that are not dspy.GEPA arguments
# a value other than the default for every knob, so a knob that does not reach dspy.GEPA shows
KNOBS = {
    "max_metric_calls": 77, "reflection_minibatch_size": 7, "candidate_selection_strategy": "current_best",
    "skip_perfect_score": False, "add_format_failure_as_feedback": True, "component_selector": "all",
    "use_merge": False, "max_merge_invocations": 2, "failure_score": -1.0, "perfect_score": 2.0,
    "track_best_outputs": True, "warn_on_score_mismatch": False, "seed": 11,
    "gepa_kwargs": {"cache_evaluation": True},
}


def test_every_gepa_knob_reaches_dspy_gepa_and_the_stops_stay(tmp_path):
    cfg = RunConfig.model_validate({**run_config(tmp_path / "out"), "optimizer": KNOBS})
    task = load_task(cfg)
    reflection_lm = dspy.LM("openai/sim", api_base="http://127.0.0.1:9/v1", api_key="unused")
    ours, theirs = object(), object()
    optimizer = make_optimizer(cfg, task, reflection_lm, callbacks=[ours], stop_callbacks=[theirs])

    for name in set(OptimizerConfig.model_fields) - OURS:  # a knob added to the schema is checked here too
        assert getattr(optimizer, name) == getattr(cfg.optimizer, name), name
    for name, value in KNOBS.items():
        assert name in OURS or getattr(optimizer, name) == value, name
    assert optimizer.auto is None and optimizer.max_full_evals is None
    assert optimizer.reflection_lm is reflection_lm and optimizer.metric_fn is task.metric
    assert optimizer.track_stats and optimizer.log_dir == str(tmp_path / "out" / "gepa")
    assert optimizer.num_threads == cfg.eval_threads()

    gepa_kwargs = optimizer.gepa_kwargs
    assert gepa_kwargs["cache_evaluation"] is True and gepa_kwargs["use_cloudpickle"] is True  # track_best_outputs
    assert gepa_kwargs["callbacks"] == [ours]
    stop, overshoot = gepa_kwargs["stop_callbacks"]
    assert stop is theirs and isinstance(overshoot, NoOvershoot)
    assert (overshoot.max_metric_calls, overshoot.iteration_cost) == (77, 2 * 7 + len(task.val))


def test_without_strict_budget_no_overshoot_stop():
    cfg = RunConfig.model_validate({**run_config("unused"), "optimizer": {"max_metric_calls": 50, "strict_budget": False}})
    task = load_task(cfg)
    optimizer = make_optimizer(cfg, task, dspy.LM("openai/sim"), callbacks=[], stop_callbacks=None)
    assert "stop_callbacks" not in optimizer.gepa_kwargs and optimizer.gepa_kwargs["callbacks"] == []
