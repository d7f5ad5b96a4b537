"""gepa_lab.trial.make_optimizer: every GEPA knob of OptimizerConfig reaches dspy.GEPA under its own name, or, where
gepa takes an object, reaches gepa.optimize through gepa_kwargs as that object; the compile keeps its own stops
(NoOvershoot, the caps, optimizer.stop) ahead of the caller's, and our callbacks."""
import time

import dspy
from gepa.strategies.proposal_sampling import PxNSampling, SingleMutationSampling
from gepa.strategies.proposal_selection import AllImprovements, TopKImprovements
from gepa.utils.stop_condition import (FileStopper, MaxCandidateProposalsStopper, MaxMetricCallsStopper,
                                       NoImprovementStopper, ScoreThresholdStopper)

from gepa_lab.config.schema import OptimizerConfig, RunConfig
from gepa_lab.lm.accounting import UsageMeter
from gepa_lab.trial import Cap, NoOvershoot, TimeoutFromGEPAStart, TrialStops, load_task, make_optimizer, trial_stops
from tests.tracking.tracking_helpers import run_config

# OptimizerConfig fields that are not dspy.GEPA arguments: gepa_lab's own, or built into gepa_kwargs
OURS = {"strict_budget", "gepa_kwargs", "max_lm_tokens", "max_wall_seconds", "max_cost_usd", "proposal_sampling",
        "proposal_selection", "acceptance_criterion", "stop"}
# a value other than the default for every knob, so a knob that does not reach dspy.GEPA shows
KNOBS = {
    "max_metric_calls": 177, "reflection_minibatch_size": 7, "candidate_selection_strategy": "current_best",
    "skip_perfect_score": False, "add_format_failure_as_feedback": True, "component_selector": "all",
    "use_merge": False, "max_merge_invocations": 2, "failure_score": -1.0, "perfect_score": 2.0,
    "track_best_outputs": True, "warn_on_score_mismatch": False, "seed": 11,
    "gepa_kwargs": {"cache_evaluation": True}, "max_lm_tokens": 5000, "max_wall_seconds": 60.0,
    "proposal_sampling": "pxn(2, 3)", "proposal_selection": "top_k(2)", "acceptance_criterion": "improvement_or_equal",
    "stop": {"no_improvement_iterations": 3, "score_threshold": 0.9, "timeout_seconds": 30.0, "max_iterations": 7},
}


def test_every_gepa_knob_reaches_dspy_gepa_and_the_stops_stay(tmp_path):
    cfg = RunConfig.model_validate({**run_config(tmp_path / "out"), "optimizer": KNOBS})
    task = load_task(cfg)
    reflection_lm = dspy.LM("openai/sim", api_base="http://127.0.0.1:9/v1", api_key="unused")
    ours, theirs = object(), object()
    stops = trial_stops(cfg, task, UsageMeter(), time.time())
    optimizer = make_optimizer(cfg, task, reflection_lm, callbacks=[ours], stop_callbacks=[theirs], stops=stops)

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
    assert gepa_kwargs["callbacks"] == [ours, stops]  # stops: the timeout's clock starts with GEPA
    assert gepa_kwargs["stop_callbacks"] == [stops, theirs]  # ours first: a trial its own budget ends is completed
    sampling, selection = gepa_kwargs["sampling_strategy"], gepa_kwargs["selection_strategy"]
    assert isinstance(sampling, PxNSampling) and (sampling.p, sampling.n) == (2, 3)
    assert isinstance(selection, TopKImprovements) and selection.k == 2
    assert gepa_kwargs["acceptance_criterion"] == "improvement_or_equal"

    conditions = stops.conditions
    assert list(conditions) == ["max_metric_calls", "max_lm_tokens", "max_wall_seconds", "no_improvement",
                                "score_threshold", "timeout", "max_iterations", "stop_file"]
    overshoot = conditions["max_metric_calls"]
    # six proposals per iteration, each scored on two minibatches of 7; the two best may each take a val pass
    assert isinstance(overshoot, NoOvershoot) and (overshoot.max_metric_calls, overshoot.iteration_cost) == \
        (177, 2 * 7 * 6 + 2 * len(task.val))
    assert isinstance(conditions["max_lm_tokens"], Cap) and conditions["max_lm_tokens"].limit == 5000
    assert isinstance(conditions["max_wall_seconds"], Cap) and conditions["max_wall_seconds"].limit == 60.0
    assert isinstance(conditions["no_improvement"], NoImprovementStopper)
    assert conditions["no_improvement"].max_iterations_without_improvement == 3
    assert isinstance(conditions["score_threshold"], ScoreThresholdStopper) and conditions["score_threshold"].threshold == 0.9
    assert isinstance(conditions["timeout"], TimeoutFromGEPAStart) and conditions["timeout"].timeout_seconds == 30.0
    assert isinstance(conditions["max_iterations"], MaxCandidateProposalsStopper)
    assert conditions["max_iterations"].max_proposals == 7
    assert isinstance(conditions["stop_file"], FileStopper)
    assert conditions["stop_file"].stop_file_path == str(tmp_path / "out" / "gepa" / "gepa.stop")


def test_defaults_build_gepas_defaults_and_without_strict_budget_gepas_own_budget_check():
    cfg = RunConfig.model_validate({**run_config("unused"), "optimizer": {"max_metric_calls": 50, "strict_budget": False}})
    task = load_task(cfg)
    stops = trial_stops(cfg, task, UsageMeter(), time.time())
    optimizer = make_optimizer(cfg, task, dspy.LM("openai/sim"), callbacks=[], stop_callbacks=None, stops=stops)
    gepa_kwargs = optimizer.gepa_kwargs
    assert isinstance(gepa_kwargs["sampling_strategy"], SingleMutationSampling)
    assert isinstance(gepa_kwargs["selection_strategy"], AllImprovements)
    assert gepa_kwargs["acceptance_criterion"] == "strict_improvement" and optimizer.candidate_selection_strategy == "pareto"
    assert gepa_kwargs["stop_callbacks"] == [stops] and isinstance(stops, TrialStops)
    assert list(stops.conditions) == ["max_metric_calls", "stop_file"]
    assert isinstance(stops.conditions["max_metric_calls"], MaxMetricCallsStopper)
