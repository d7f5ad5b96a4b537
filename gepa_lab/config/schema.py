"""The validated shape of a run: Hydra composes conf/, pydantic checks it before anything starts."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from gepa_lab.strict import StrictModel, defaults_of

from gepa_lab.corpus.config import CorpusConfig
from gepa_lab.lm.config import LMCacheConfig, LMConfig
from gepa_lab.tasks.task import TaskConfig


class OptimizerConfig(StrictModel):
    """dspy.GEPA's knobs, one to one (conf/optimizer/gepa.yaml)."""

    auto: Literal["light", "medium", "heavy"] | None = None
    max_full_evals: int | None = Field(None, ge=1)
    max_metric_calls: int | None = Field(None, ge=1)
    strict_budget: bool = True  # no iteration starts that could take max_metric_calls past its limit
    reflection_minibatch_size: int = Field(30, ge=1)  # banking77's 77 labels need big batches to learn within ~1,000 calls
    candidate_selection_strategy: Literal["pareto", "current_best"] = "pareto"
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
    gepa_kwargs: dict[str, Any] = Field(default_factory=dict)  # forwarded to gepa.optimize

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


def store_defaults(name: str, model: type[BaseModel]) -> None:
    """Hydra's config store gets `model`'s defaults as the config `name`, which conf/run.yaml (conf/sweep.yaml) names
    first in its defaults list: conf/ then states only what differs from the model's defaults, and every option can
    still be overridden as key=value (no '+')."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=defaults_of(model))


store_defaults("run_defaults", RunConfig)
