"""The validated shape of a run: Hydra composes conf/, pydantic checks it before anything starts."""
from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from gepa_lab.strict import StrictModel, defaults_of

from gepa_lab.corpus.config import CorpusConfig
from gepa_lab.lm.config import LMCacheConfig, LMConfig
from gepa_lab.tasks.task import TaskConfig


# gepa.optimize arguments that dspy.GEPA passes itself (a gepa_kwargs key of the same name raises a TypeError or is
# overridden) or that a typed key here builds: such a gepa_kwargs key is refused, naming what to set instead
SET_BY_DSPY_OR_US = {
    **{key: f"optimizer.{key}" for key in (
        "candidate_selection_strategy", "skip_perfect_score", "reflection_minibatch_size", "perfect_score", "use_merge",
        "max_merge_invocations", "max_metric_calls", "track_best_outputs", "seed", "acceptance_criterion")},
    "module_selector": "optimizer.component_selector",
    "sampling_strategy": "optimizer.proposal_sampling",
    "selection_strategy": "optimizer.proposal_selection",
    "stop_callbacks": "optimizer.stop (GEPA's stop conditions) or optimizer.max_lm_tokens / max_wall_seconds / "
                      "max_cost_usd (the trial's caps)",
    "max_reflection_cost": "optimizer.max_cost_usd",
    "callbacks": "nothing: gepa_lab's own callbacks record the run",
    "run_dir": "output_dir (GEPA's state goes to OUTPUT_DIR/gepa)",
    "logger": "nothing: GEPA's log goes to OUTPUT_DIR/compile.log",
    "display_progress_bar": "nothing: gepa_lab shows its own progress",
    "raise_on_exception": "nothing: dspy.GEPA always raises",
    **{key: "tracking.* (gepa_lab's W&B and MLflow runs)"
       for key in ("use_wandb", "wandb_api_key", "wandb_init_kwargs", "use_mlflow")},
    **{key: "task.* and corpus.* (the program and its data)"
       for key in ("seed_candidate", "trainset", "valset", "adapter", "task_lm", "evaluator")},
    "reflection_lm": "reflection_lm.* (the reflection LM's config)",
}
# proposal_sampling / proposal_selection spellings: name -> its integer arguments (gepa.strategies)
SAMPLINGS = {"single": (), "same_parent": ("n",), "independent": ("n",), "pxn": ("p", "n")}
SELECTIONS = {"all_improvements": (), "best_improvement": (), "top_k": ("k",)}
_SPELLED = re.compile(r"(?P<name>[a-z_]+)(?:\((?P<args>[^()]*)\))?")
MERGE_SUBSAMPLE = 5  # validation examples a merged candidate is scored on before its full pass (gepa's MergeProposer)


def parse_spelled(value: str, known: dict[str, tuple[str, ...]]) -> tuple[str, tuple[int, ...]]:
    """"pxn(2, 3)" -> ("pxn", (2, 3)); one line naming the accepted spellings for anything else."""
    spellings = ", ".join(f"{name}({', '.join(args)})" if args else name for name, args in known.items())
    match = _SPELLED.fullmatch(value.strip())
    name = match and match["name"]
    try:
        args = tuple(int(a) for a in match["args"].split(",")) if match and match["args"] is not None else ()
    except ValueError:
        args = None
    if name not in known or args is None or len(args) != len(known[name]) or any(a < 1 for a in args):
        raise ValueError(f"expected one of {spellings}, each argument an integer >= 1")
    return name, args


class StopConfig(StrictModel):
    """GEPA's own stop conditions (gepa.utils.stop_condition), checked before each iteration beside the budget;
    whichever ends the compile is `gepa_stop_reason`, and the trial is `completed`."""

    no_improvement_iterations: int | None = Field(None, ge=1)  # iterations in a row without a better best val score
    score_threshold: float | None = None  # stop once the best val score reaches it
    timeout_seconds: float | None = Field(None, ge=0)  # the clock starts when GEPA starts (after the seed's test)
    max_iterations: int | None = Field(None, ge=1)  # gepa's MaxCandidateProposalsStopper: an iteration proposes
    # proposals_per_iteration candidates


class OptimizerConfig(StrictModel):
    """dspy.GEPA's knobs (conf/optimizer/gepa.yaml): most one to one; the proposal strategies, the acceptance criterion
    and the stop conditions, which gepa takes as objects, spelled as values gepa_lab builds them from."""

    auto: Literal["light", "medium", "heavy"] | None = None
    max_full_evals: int | None = Field(None, ge=1)
    max_metric_calls: int | None = Field(None, ge=1)
    strict_budget: bool = True  # no iteration starts that could take max_metric_calls past its limit
    # the trial's caps besides metric calls: reached during an iteration, that iteration finishes and no other starts
    max_lm_tokens: int | None = Field(None, ge=1)  # prompt + completion tokens of both LMs that reached a server
    max_wall_seconds: float | None = Field(None, gt=0)  # since the trial started
    max_cost_usd: float | None = Field(None, gt=0)  # needs lm / reflection_lm prices
    reflection_minibatch_size: int = Field(30, ge=1)  # banking77's 77 labels need big batches to learn within ~1,000 calls
    # (parent, minibatch) tasks per iteration, each one proposal: single | same_parent(n) | independent(n) | pxn(p, n)
    proposal_sampling: str = "single"
    # which of an iteration's improving proposals join the pool: all_improvements | best_improvement | top_k(k)
    proposal_selection: str = "all_improvements"
    acceptance_criterion: Literal["strict_improvement", "improvement_or_equal"] = "strict_improvement"
    candidate_selection_strategy: Literal["pareto", "current_best", "epsilon_greedy", "top_k_pareto"] = "pareto"
    skip_perfect_score: bool = True
    add_format_failure_as_feedback: bool = False
    component_selector: Literal["round_robin", "all"] = "round_robin"  # gepa raises on any other name, mid-run
    use_merge: bool = True
    max_merge_invocations: int | None = Field(5, ge=0)
    failure_score: float = 0.0
    perfect_score: float = 1.0
    track_best_outputs: bool = False
    warn_on_score_mismatch: bool = True
    seed: int = 0
    stop: StopConfig = Field(default_factory=StopConfig)
    gepa_kwargs: dict[str, Any] = Field(default_factory=dict)  # forwarded to gepa.optimize

    @field_validator("proposal_sampling")
    @classmethod
    def _sampling(cls, value: str) -> str:
        parse_spelled(value, SAMPLINGS)
        return value

    @field_validator("proposal_selection")
    @classmethod
    def _selection(cls, value: str) -> str:
        parse_spelled(value, SELECTIONS)
        return value

    @field_validator("gepa_kwargs")
    @classmethod
    def _no_colliding_gepa_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in SET_BY_DSPY_OR_US:
                raise ValueError(f"gepa_kwargs.{key} is set by dspy.GEPA or gepa_lab; set {SET_BY_DSPY_OR_US[key]}")
        return value

    @model_validator(mode="after")
    def _one_budget(self):
        given = [k for k in ("auto", "max_full_evals", "max_metric_calls") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"optimizer: set exactly one of auto, max_full_evals, max_metric_calls (got {given or 'none'})"
            )
        return self

    @model_validator(mode="after")
    def _picklable_best_outputs(self):
        # gepa pickles its state into log_dir every iteration; best outputs hold dspy signatures, which pickle
        # refuses ("Can't pickle StringSignature") and cloudpickle serializes.
        if self.track_best_outputs:
            self.gepa_kwargs.setdefault("use_cloudpickle", True)
        return self

    def sampling(self) -> tuple[str, tuple[int, ...]]:
        return parse_spelled(self.proposal_sampling, SAMPLINGS)

    def selection(self) -> tuple[str, tuple[int, ...]]:
        return parse_spelled(self.proposal_selection, SELECTIONS)

    @property
    def proposals_per_iteration(self) -> int:
        return math.prod(self.sampling()[1])

    @property
    def accepted_per_iteration(self) -> int:
        """The most proposals of one iteration that can join the pool (each then scored on all of val)."""
        name, args = self.selection()
        bound = {"all_improvements": self.proposals_per_iteration, "best_improvement": 1}.get(name) or args[0]
        return min(bound, self.proposals_per_iteration)

    def iteration_cost(self, val_size: int) -> int:
        """The most metric calls one GEPA iteration can spend: each proposal's parent and child scored on a
        reflection minibatch, then every accepted one on all of val; or a merge, scored on a few val examples and
        then all of them (an iteration that merges proposes nothing else)."""
        reflective = 2 * self.reflection_minibatch_size * self.proposals_per_iteration + self.accepted_per_iteration * val_size
        merge = MERGE_SUBSAMPLE + val_size if self.use_merge else 0
        return max(reflective, merge)


class EvalConfig(StrictModel):
    num_threads: int | None = Field(None, ge=1)  # None: fill the task LM's capacity (a sweep: its share of it)
    test_limit: int | None = Field(None, ge=1)  # score the winner on the first N test examples only


class WandbConfig(StrictModel):
    enabled: bool = True
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "gepa_lab"
    entity: str | None = None


class MlflowConfig(StrictModel):
    enabled: bool = True
    tracking_uri: str | None = None  # None: sqlite store inside output_dir
    experiment: str = "gepa_lab"
    registered_model_name: str | None = None  # None: gepa_lab-<task>
    alias: str = "champion"
    load_back_examples: int = Field(5, ge=1)


class TrackingConfig(StrictModel):
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)


class RunConfig(StrictModel):
    """One GEPA compile (gepa_lab.run, and each trial of a sweep)."""

    output_dir: str
    corpus: CorpusConfig
    task: TaskConfig
    lm: LMConfig
    reflection_lm: LMConfig
    optimizer: OptimizerConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cache: LMCacheConfig = Field(default_factory=LMCacheConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def eval_threads(self) -> int:
        return self.eval.num_threads or self.lm.capacity

    @model_validator(mode="after")
    def _budget_pays_for_an_iteration(self):
        """A max_metric_calls that cannot pay for the seed's validation pass plus one iteration would end the compile
        with zero iterations and report the seed as the winner: refused, with the budget it needs."""
        opt, val = self.optimizer, self.corpus.splits.val
        if opt.max_metric_calls is None:
            return self
        cost = opt.iteration_cost(val) if opt.strict_budget else 1  # without the strict check GEPA needs a call left
        if opt.max_metric_calls < val + cost:
            why = (f"the most one iteration can cost ({cost}; docs/optimizer.md)" if opt.strict_budget
                   else "one call (strict_budget is off)")
            raise ValueError(f"optimizer.max_metric_calls={opt.max_metric_calls} cannot pay for one GEPA iteration: "
                             f"it needs at least {val + cost}, the seed's validation pass ({val}) plus {why}")
        return self

    def has_prices(self) -> bool:
        """Whether either LM has a price, so that LM usage costs something (gepa_lab.lm.accounting)."""
        prices = ("price_per_1k_prompt_tokens", "price_per_1k_completion_tokens")
        return any(getattr(lm, price) for lm in (self.lm, self.reflection_lm) for price in prices)

    @model_validator(mode="after")
    def _cost_cap_has_prices(self):
        if self.optimizer.max_cost_usd is not None and not self.has_prices():
            raise ValueError("optimizer.max_cost_usd needs a price: set lm.price_per_1k_prompt_tokens / "
                             "price_per_1k_completion_tokens (or reflection_lm's)")
        return self


def store_defaults(name: str, model: type[BaseModel]) -> None:
    """Hydra's config store gets `model`'s defaults as the config `name`, which conf/run.yaml (conf/sweep.yaml) names
    first in its defaults list: conf/ then states only what differs from the model's defaults, and every option can
    still be overridden as key=value (no '+')."""
    from gepa_lab.compose import store_config

    store_config(name, defaults_of(model))


store_defaults("run_defaults", RunConfig)
