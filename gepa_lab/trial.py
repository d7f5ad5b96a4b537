"""One GEPA compile: config in, scores + saved winner + events out. The only caller of dspy.GEPA.

gepa_lab.harness sets each trial up (output folder, cache, LM endpoints, sinks) and calls run_trial, for
`gepa_lab.run`, a Ray Tune trial and a W&B Sweeps agent alike; the trial just emits events (gepa_lab.events)
and never knows who listens."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dspy
from dspy.utils.parallelizer import ParallelExecutor
from gepa.strategies.proposal_sampling import IndependentSampling, PxNSampling, SameParentSampling, SingleMutationSampling
from gepa.strategies.proposal_selection import AllImprovements, BestImprovement, TopKImprovements
from gepa.utils.stop_condition import (FileStopper, MaxCandidateProposalsStopper, MaxMetricCallsStopper,
                                       NoImprovementStopper, ScoreThresholdStopper, TimeoutStopCondition)

from gepa_lab import atomic
from gepa_lab.cli import raise_if_stop_requested, stops_deferred
from gepa_lab.config.schema import RunConfig
from gepa_lab.config.identity import run_identity
from gepa_lab.corpus import ensure_prepared, read_manifest, read_split
from gepa_lab.events import INTERVALS, EventStream
from gepa_lab.lm.accounting import UsageMeter
from gepa_lab.lm.endpoint import build_lm, lost_endpoint, raise_if_unavailable
from gepa_lab.results.stats import bootstrap_ci, paired_bootstrap_ci
from gepa_lab.servers.serving import Endpoint
from gepa_lab.tasks.outcomes import (Raised, RecordingMetric, UserCodeError, describe, example_id, is_user_code_error,
                                     program_instructions, with_ids)
from gepa_lab.tasks.task import Task, build_program, resolve_metric, to_examples


class TrialPaused(SystemExit):
    """Raised by a sink when the trial's scheduler pauses it (Ray Tune ends a paused trial's thread with SystemExit):
    the trial is recorded as paused, not failed, and resumes from its GEPA state."""


def load_task(cfg: RunConfig) -> Task:
    corpus_dir = ensure_prepared(cfg.corpus)
    manifest = read_manifest(corpus_dir)

    def split(name: str) -> list[dspy.Example]:
        rows = read_split(corpus_dir, name)
        return with_ids(to_examples(rows, manifest), (row["id"] for row in rows))

    return Task(
        name=cfg.task.name,
        program=build_program(cfg.task, manifest),
        metric=RecordingMetric(resolve_metric(cfg.task.metric)),  # its `running` goes among dspy's callbacks
        train=split("train"),
        val=split("val"),
        test=split("test"),
        manifest=manifest,
        corpus_dir=corpus_dir,
    )


def _score(result: Any) -> float:
    value = getattr(result, "score", result)
    return float(value) if value is not None else 0.0


def scored_examples(examples: list[dspy.Example], scores: list[float], metric: RecordingMetric,
                    candidate: dict[str, str]) -> dict[str, Any]:
    """An evaluation event's per-example data, each keyed by the example's corpus id: the scores, and the predictions
    (JSON of the output fields) and feedback that `metric` recorded for this candidate on these examples."""
    outcomes = metric.take(candidate, [example_id(e) for e in examples])
    return {
        "scores": {example_id(e): float(s) for e, s in zip(examples, scores, strict=True)},
        "predictions": {i: o.prediction for i, o in outcomes.items()},
        "feedback": {i: o.feedback for i, o in outcomes.items()},
    }


STATE_FILE = "gepa_state.bin"  # GEPA saves its state as this file in its run directory (output_dir/gepa)
SEED_TEST_FILE = "seed_test.json"  # the seed's test scores, in output_dir (seed_test_scores)


def saved_candidates(gepa_dir: Path) -> int:
    """How many candidates GEPA's saved state in gepa_dir holds (0 without one). Read from the file, not from the
    state_saved callback: a stop can land between GEPA's save and its callback."""
    if not (gepa_dir / STATE_FILE).exists():
        return 0
    with open(gepa_dir / STATE_FILE, "rb") as f:
        return len(pickle.load(f)["program_candidates"])


@dataclass
class GEPAEvents:
    """GEPA's callbacks (gepa.core.callbacks) -> our event stream."""

    events: EventStream
    meter: UsageMeter
    metric: RecordingMetric  # the task metric, holding what it said about each example
    val: list[dspy.Example]  # GEPA's val ids are indices into it
    metric_calls: int = 0
    best_val: float = -math.inf
    started: float = field(default_factory=time.time)
    proposals: int = 0  # reflective proposals (new instruction texts) made in this process
    iteration_proposals: int = 0  # ... in the iteration under way
    iterations: int = 0  # GEPA's iteration count when it ended (it continues across a resume)
    # GEPA starts from a saved state (a resume; a PBT segment's, or its donor's): every start notifies the seed's val
    # scores the state holds, recorded already where it was made (a candidate is unique per trial, segment and index)
    continues_state: bool = False

    def on_proposal_end(self, event):
        self.proposals += 1
        self.iteration_proposals += 1

    def on_optimization_end(self, event):
        self.iterations = event["total_iterations"] + 1  # gepa's state.i: the last iteration's index, from 0

    def on_state_saved(self, event):
        # GEPA saved its state in its run dir: a scheduler may take a checkpoint of it now (gepa_lab/sweep/pbt.py)
        self.events.emit("state_saved", run_dir=event["run_dir"], best_val=self.best_val, metric_calls=self.metric_calls)

    def on_budget_updated(self, event):
        self.metric_calls = event["metric_calls_used"]

    def on_valset_evaluated(self, event):
        self.best_val = max(self.best_val, event["average_score"])
        if self.continues_state and (event["iteration"], event["candidate_idx"]) == (0, 0):
            return
        self.events.emit(
            "candidate",
            iteration=event["iteration"],
            candidate_idx=event["candidate_idx"],
            parents=[p for p in event["parent_ids"] if p is not None],
            instructions=dict(event["candidate"]),
            val_score=event["average_score"],
            metric_calls=self.metric_calls,
        )
        examples = [self.val[int(k)] for k in event["scores_by_val_id"]]
        scores = list(event["scores_by_val_id"].values())
        self.events.emit("evaluation", split="val", candidate_idx=event["candidate_idx"],
                         **scored_examples(examples, scores, self.metric, event["candidate"]))

    def on_iteration_end(self, event):
        self.events.emit(
            "iteration",
            iteration=event["iteration"],
            accepted=bool(event["proposal_accepted"]),
            proposals=self.iteration_proposals,
            best_val=self.best_val,
            metric_calls=self.metric_calls,
            seconds=time.time() - self.started,
            usage=self.meter.snapshot(),
        )
        self.metric.clear()  # this iteration's accepted candidates were taken at their val evaluation
        self.iteration_proposals = 0


def evaluate(program: dspy.Module, examples: list, metric: Callable, threads: int,
             failure_score: float) -> tuple[float, list[float], list[Raised]]:
    """The mean score, each example's, and where the user's code raised, in example order: such an example scores
    failure_score, as GEPA scores it. An LM that fails for good is dspy's, as in dspy.Evaluate (up to max_errors)."""
    if not examples:
        return 0.0, [], []

    def score_one(example: dspy.Example) -> tuple[float, Raised | None]:
        where = "program"
        try:
            pred = program(**example.inputs())
            where = "metric"
            return _score(metric(example, pred)), None
        except Exception as e:
            if not is_user_code_error(e):
                raise
            return failure_score, Raised(where, example_id(example), describe(e))

    outcomes = ParallelExecutor(num_threads=threads, disable_progress_bar=True).execute(score_one, examples)
    outcomes = [(failure_score, None) if o is None else o for o in outcomes]  # None: the LM failed for good
    scores = [float(score) for score, _ in outcomes]
    return sum(scores) / len(scores), scores, [raised for _, raised in outcomes if raised]


def _raised_text(raised: Raised | None, cfg: RunConfig) -> str | None:
    if raised is None:
        return None
    on = f" on example {raised.example_id}" if raised.example_id is not None else ""
    return f"task.{raised.where} {getattr(cfg.task, raised.where)}{on}: {raised.error}"


def stop_if_nothing_scores(raised: list[Raised], examples: list, cfg: RunConfig) -> None:
    """Before GEPA: a program or metric that raised on every example of the seed's evaluation would leave GEPA only
    failure scores to learn from; one line names it, the example and the exception."""
    if examples and len(raised) == len(examples):
        raise UserCodeError(f"the user's code raised on all {len(examples)} test examples of the seed program's "
                            f"evaluation, so GEPA was not started; the first: {_raised_text(raised[0], cfg)}")


def score_intervals(seed_scores: list[float], best_scores: list[float]) -> dict[str, list[float] | None]:
    """95% intervals, each [low, high], of the seed's and the winner's test scores (bootstrap over the test examples)
    and of the winner's gain over the seed (paired: both programs' scores on the same resampled examples).
    None without test examples. The scores go in sorted (pairs kept together): the bootstrap resamples positions, and
    an interval must depend on the scores alone, not on the order the examples were scored in."""
    if not seed_scores:
        return dict.fromkeys(INTERVALS)
    pairs = sorted(zip(seed_scores, best_scores, strict=True))
    return {
        "seed_test_ci95": list(bootstrap_ci(sorted(seed_scores))),
        "best_test_ci95": list(bootstrap_ci(sorted(best_scores))),
        "test_gain_ci95": list(paired_bootstrap_ci([seed for seed, _ in pairs], [best for _, best in pairs])),
    }


@dataclass
class NoOvershoot:
    """GEPA stop condition: stop before an iteration that could take the run past max_metric_calls
    (OptimizerConfig.iteration_cost: every proposal's minibatches, every acceptable one's full validation pass)."""

    max_metric_calls: int
    iteration_cost: int

    def __call__(self, gepa_state) -> bool:
        return gepa_state.total_num_evals + self.iteration_cost > self.max_metric_calls


@dataclass
class Cap:
    """A per-trial cap (LM tokens, wall time, cost): holds once `spent()` reaches `limit`. GEPA checks it before each
    iteration, so the iteration under way when it is reached finishes; `spent_at_stop` is the spend at the last check,
    which stopped the compile when this cap held: the overshoot is at most one iteration's."""

    limit: float
    spent: Callable[[], float]
    spent_at_stop: float = 0.0

    def __call__(self, gepa_state) -> bool:
        self.spent_at_stop = self.spent()
        return self.spent_at_stop >= self.limit


class TimeoutFromGEPAStart(TimeoutStopCondition):
    """gepa's timeout, with its clock started when GEPA starts (a callback), not when it was built: the seed's test
    evaluation, which runs in between, is not GEPA's time."""

    def on_optimization_start(self, event):
        self.start_time = time.time()


@dataclass
class TrialStops:
    """The trial's own stop conditions as one GEPA stopper, checked before each iteration: the metric-call budget,
    the caps, optimizer.stop and the gepa.stop file. `reason` names the first that held: why GEPA stopped on its
    own (gepa_stop_reason), as opposed to a sweep's budget or scheduler stopping the trial. Also a GEPA callback,
    for the timeout's clock."""

    conditions: dict[str, Callable[[Any], bool]]
    reason: str | None = None

    def __call__(self, gepa_state) -> bool:
        held = [name for name, condition in self.conditions.items() if condition(gepa_state)]  # each called: some count
        if held:
            self.reason = held[0]
        return bool(held)

    def on_optimization_start(self, event):
        for condition in self.conditions.values():
            getattr(condition, "on_optimization_start", lambda e: None)(event)

    def budgets(self, metric_calls: int) -> dict[str, dict[str, float]]:
        """Each limit set, what was spent when GEPA stopped, and by how much that passed the limit."""
        spent = {name: c.spent_at_stop for name, c in self.conditions.items() if isinstance(c, Cap)}
        limits = {name: c.limit for name, c in self.conditions.items() if isinstance(c, Cap)}
        budget = self.conditions.get("max_metric_calls")
        if budget is not None:
            spent["max_metric_calls"], limits["max_metric_calls"] = metric_calls, budget.max_metric_calls
        return {name: {"limit": limits[name], "spent": round(spent[name], 6),
                       "over": round(max(0.0, spent[name] - limits[name]), 6)} for name in limits}


def _total(meter: UsageMeter, field_name: str) -> float:
    return sum(role[field_name] for role in meter.snapshot().values())


def trial_stops(cfg: RunConfig, task: Task, meter: UsageMeter, started: float) -> TrialStops:
    opt, stop = cfg.optimizer, cfg.optimizer.stop
    conditions: dict[str, Callable[[Any], bool]] = {}
    if opt.max_metric_calls:
        conditions["max_metric_calls"] = (NoOvershoot(opt.max_metric_calls, opt.iteration_cost(len(task.val)))
                                          if opt.strict_budget else MaxMetricCallsStopper(opt.max_metric_calls))
    if opt.max_lm_tokens:
        conditions["max_lm_tokens"] = Cap(opt.max_lm_tokens, lambda: _total(meter, "total_tokens"))
    if opt.max_wall_seconds:
        conditions["max_wall_seconds"] = Cap(opt.max_wall_seconds, lambda: time.time() - started)
    if opt.max_cost_usd:
        conditions["max_cost_usd"] = Cap(opt.max_cost_usd, lambda: _total(meter, "cost_usd"))
    if stop.no_improvement_iterations:
        conditions["no_improvement"] = NoImprovementStopper(stop.no_improvement_iterations)
    if stop.score_threshold is not None:
        conditions["score_threshold"] = ScoreThresholdStopper(stop.score_threshold)
    if stop.timeout_seconds is not None:
        conditions["timeout"] = TimeoutFromGEPAStart(stop.timeout_seconds)
    if stop.max_iterations:
        conditions["max_iterations"] = MaxCandidateProposalsStopper(stop.max_iterations)
    conditions["stop_file"] = FileStopper(str(Path(cfg.output_dir) / "gepa" / "gepa.stop"))  # gepa's own, named here
    return TrialStops(conditions)


SAMPLING = {"single": SingleMutationSampling, "same_parent": SameParentSampling, "independent": IndependentSampling,
            "pxn": PxNSampling}
SELECTION = {"all_improvements": AllImprovements, "best_improvement": BestImprovement, "top_k": TopKImprovements}
# OptimizerConfig fields that are not dspy.GEPA keywords: gepa_lab's own, or built into gepa.optimize's objects
NOT_GEPA_ARGUMENTS = {"strict_budget", "gepa_kwargs", "max_lm_tokens", "max_wall_seconds", "max_cost_usd",
                      "proposal_sampling", "proposal_selection", "acceptance_criterion", "stop"}


def make_optimizer(cfg: RunConfig, task: Task, reflection_lm: dspy.LM, callbacks: list, stop_callbacks: list | None,
                   stops: TrialStops) -> dspy.GEPA:
    """dspy.GEPA with cfg.optimizer's knobs; the typed ones dspy.GEPA does not take go to gepa.optimize through
    gepa_kwargs as gepa's objects. `stops` (the trial's own) is checked before the caller's stop_callbacks (a sweep's
    budget, ASHA), so a trial its own budget ends is not taken for one the sweep stopped."""
    opt = cfg.optimizer
    sampling, sampling_args = opt.sampling()
    selection, selection_args = opt.selection()
    gepa_kwargs = {
        **opt.gepa_kwargs,
        "callbacks": [*callbacks, stops],
        "stop_callbacks": [stops, *(stop_callbacks or [])],
        "sampling_strategy": SAMPLING[sampling](*sampling_args),
        "selection_strategy": SELECTION[selection](*selection_args),
        "acceptance_criterion": opt.acceptance_criterion,  # gepa.optimize builds it from its name
    }
    return dspy.GEPA(
        metric=task.metric,
        reflection_lm=reflection_lm,
        num_threads=cfg.eval_threads(),
        log_dir=str(Path(cfg.output_dir) / "gepa"),  # gepa saves its state here every iteration: reruns resume
        track_stats=True,
        gepa_kwargs=gepa_kwargs,
        **opt.model_dump(exclude=NOT_GEPA_ARGUMENTS),
    )


@contextlib.contextmanager
def ending_on_lm_outage(lms: dict[str, dspy.LM]):
    """An LM endpoint lost mid-trial (gepa_lab.lm.endpoint.LMUnavailable) is the trial's error, in one line naming
    it, whatever it broke on its way out (dspy's evaluation cancelled, GEPA's iteration raising)."""
    try:
        yield
    except Exception:
        raise_if_unavailable(lms)
        raise
    raise_if_unavailable(lms)


@contextlib.contextmanager
def library_output_to(path: Path):
    """dspy and GEPA print progress bars and log every iteration: into the trial's compile.log, not the console
    (our own events drive the progress users see)."""
    with open(path, "a") as log, contextlib.redirect_stdout(log):
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        saved = []
        for logger in map(logging.getLogger, ("dspy", "gepa")):
            saved.append((logger, logger.level, logger.propagate, logger.handlers[:]))
            logger.handlers, logger.propagate = [handler], False
            logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            for logger, level, propagate, handlers in saved:
                logger.handlers, logger.propagate = handlers, propagate
                logger.setLevel(level)


def save_program(program: dspy.Module, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        program.save(str(tmp))  # state only (instructions, demos): no LM, no key


def seed_test_scores(cfg: RunConfig, task: Task, test: list, events: EventStream,
                     lms: dict[str, dspy.LM]) -> tuple[float, list[float]]:
    """The seed program's test score and per-example scores: evaluated and recorded once per output_dir (kept in
    seed_test.json, after its rows are written), read back when the compile resumes."""
    path = Path(cfg.output_dir) / SEED_TEST_FILE
    if path.exists():
        scores = json.loads(path.read_text())["scores"]
        return sum(scores) / len(scores) if scores else 0.0, scores
    score, scores, raised = evaluate(task.program, test, task.metric, cfg.eval_threads(), cfg.optimizer.failure_score)
    raise_if_stop_requested()  # before scores of refused calls are recorded as the seed's
    raise_if_unavailable(lms)  # before its failure scores are recorded as the seed's
    stop_if_nothing_scores(raised, test, cfg)
    events.emit("evaluation", split="test", candidate_idx=0,
                **scored_examples(test, scores, task.metric, program_instructions(task.program)))
    atomic.write_json(path, {"scores": scores})
    return score, scores


def run_trial(
    cfg: RunConfig,
    endpoints: dict[str, Endpoint],
    events: EventStream,
    stop_callbacks: list[Callable] | None = None,
    extra_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compile cfg.task with dspy.GEPA into cfg.output_dir; score seed and winner on val and test;
    save the winner; return (and write) summary.json."""
    started = time.time()
    out = Path(cfg.output_dir)
    identity = run_identity(cfg)
    task = load_task(cfg)
    task_lm = build_lm(cfg.lm, endpoints["task"].api_base, role="task", seed=cfg.optimizer.seed, token=endpoints["task"].token)
    reflection_lm = build_lm(cfg.reflection_lm, endpoints["reflection"].api_base, role="reflection", seed=cfg.optimizer.seed,
                             token=endpoints["reflection"].token)
    lms = {"task": task_lm, "reflection": reflection_lm}
    meter = UsageMeter(lms, prices={"task": cfg.lm, "reflection": cfg.reflection_lm})
    threads = cfg.eval_threads()
    test = task.test[: cfg.eval.test_limit] if cfg.eval.test_limit else task.test
    lm_lost = [lambda state: lost_endpoint(lms) is not None]  # GEPA stops at its next iteration; the trial then fails
    gepa_events = GEPAEvents(events, meter, task.metric, task.val,
                             continues_state=(out / "gepa" / STATE_FILE).exists())
    stops = trial_stops(cfg, task, meter, started)
    # a deferred stop first: GEPA's composite stopper asks in turn and stops asking at the first that holds
    optimizer = make_optimizer(cfg, task, reflection_lm, [gepa_events],
                               [raise_if_stop_requested, *(stop_callbacks or []), *lm_lost], stops)
    events.emit("trial_started", config=cfg.model_dump(mode="json"), manifest_hash=task.manifest["manifest_hash"], **identity)
    try:
        with stops_deferred(), library_output_to(out / "compile.log"), ending_on_lm_outage(lms), \
                dspy.context(lm=task_lm, adapter=cfg.lm.dspy_adapter(),
                             callbacks=[*dspy.settings.callbacks, meter, task.metric.running]):
            seed_test, seed_scores = seed_test_scores(cfg, task, test, events, lms)
            winner = optimizer.compile(task.program, trainset=task.train, valset=task.val)
            results = winner.detailed_results
            best_idx = results.best_idx
            best_test, best_scores = seed_test, seed_scores
            if best_idx != 0:
                best_test, best_scores, _ = evaluate(winner, test, task.metric, threads, cfg.optimizer.failure_score)
                raise_if_stop_requested()
                events.emit("evaluation", split="test", candidate_idx=best_idx,
                            **scored_examples(test, best_scores, task.metric, program_instructions(winner)))
        save_program(winner, out / "program.json")
        usage = meter.snapshot()
        # a stop callback that ends the compile early for the sweep (budget, ASHA) says why in `.reason`
        sweep_stop = next((r for cb in stop_callbacks or [] if (r := getattr(cb, "reason", None))), None)
        summary = {
            "task": task.name,
            "corpus": cfg.corpus.name,
            "corpus_manifest_hash": task.manifest["manifest_hash"],
            **identity,
            "seed_val_score": results.val_aggregate_scores[0],
            "seed_test_score": seed_test,
            "best_val_score": results.val_aggregate_scores[best_idx],
            "best_test_score": best_test,
            **score_intervals(seed_scores, best_scores),
            "best_candidate_idx": best_idx,
            "num_candidates": len(results.candidates),
            "metric_calls": results.total_metric_calls,
            "iterations": gepa_events.iterations,
            "proposals": gepa_events.proposals,
            "lm_calls": sum(role["requests"] for role in usage.values()),
            "lm_usage": usage,
            # calls of the program or metric that raised (each example scored optimizer.failure_score), and the first
            "user_code_errors": task.metric.errors.count,
            "first_user_code_error": _raised_text(task.metric.errors.first, cfg),
            "best_instructions": {name: p.signature.instructions for name, p in winner.named_predictors()},
            "task_lm": {"model": cfg.lm.model, "api_base": endpoints["task"].api_base,
                        "temperature": cfg.lm.temperature, "max_tokens": cfg.lm.max_tokens},
            "program_path": str(out / "program.json"),
            "gepa_log_dir": str(out / "gepa"),
            "stop_reason": sweep_stop,
            # neither ours nor the sweep's: gepa's own metric-call budget (auto, max_full_evals: dspy sets it at compile)
            "gepa_stop_reason": stops.reason or (None if sweep_stop else "max_metric_calls"),
            "budgets": stops.budgets(results.total_metric_calls),
            "sink_failures": dict(events.failures),
            "wall_seconds": round(time.time() - started, 3),
            **(extra_summary or {}),
        }
        atomic.write_json(out / "summary.json", summary)
    except TrialPaused:
        events.emit("trial_paused", saved_candidates=saved_candidates(out / "gepa"), lm_usage=meter.snapshot())
        raise
    except BaseException as exc:  # the sinks record the failure; the caller decides what it means
        events.emit("trial_failed", error=f"{type(exc).__name__}: {exc}", saved_candidates=saved_candidates(out / "gepa"),
                    lm_usage=meter.snapshot())
        raise
    events.emit("trial_finished", summary=summary)
    return summary
