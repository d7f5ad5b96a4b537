"""The validated shape of a sweep: a RunConfig (the base of every trial) plus the sweep block."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from gepa_lab.strict import StrictModel

from gepa_lab.config.schema import RunConfig, store_defaults
from gepa_lab.servers.ray_cluster import RayConfig


class Budget(StrictModel):
    """Spent across all trials; when one is reached no new trial starts and running ones stop at
    their next GEPA iteration, keeping what they found."""

    metric_calls: int | None = Field(None, ge=1)
    lm_tokens: int | None = Field(None, ge=1)  # prompt + completion, both roles
    cost_usd: float | None = Field(None, gt=0)  # from the LMs' price_per_1k_* (0 where no price is set)
    wall_seconds: float | None = Field(None, gt=0)  # the sweep's running time, summed over its reruns


class Resources(StrictModel):
    cpu: float = Field(1, gt=0)
    custom: dict[str, float] = Field(default_factory=dict)  # e.g. {node_type_a: 1}


class Asha(StrictModel):
    grace_metric_calls: int = Field(100, ge=1)  # trials are compared at equal metric calls
    reduction_factor: float = Field(2, gt=1)


class Pbt(StrictModel):
    """Population-based search (gepa_lab/sweep/pbt.py): every interval_metric_calls a trial in the bottom
    quantile_fraction continues from a top trial's GEPA state, with mutations' values perturbed."""

    interval_metric_calls: int = Field(100, ge=1)  # metric calls a trial executes between two exploit decisions
    mutations: dict[str, list[Any]] = Field(default_factory=dict)  # dotted config key -> values PBT picks among
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)


class SweepSpec(StrictModel):
    name: str = Field(min_length=1)
    search: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(1, ge=1)  # grid: repeats of the whole grid; random/optuna: trials
    max_concurrent: int | None = Field(None, ge=1)  # None: as many as Ray's CPUs allow
    scheduler: Literal["fifo", "asha", "pbt"] = "fifo"
    asha: Asha = Field(default_factory=Asha)
    pbt: Pbt = Field(default_factory=Pbt)
    searcher_seed: int = 0
    budget: Budget = Field(default_factory=Budget)
    # retries of a trial whose worker died (killed, out of memory): it resumes from its GEPA state
    max_failures: int = Field(2, ge=0)
    resources: Resources = Field(default_factory=Resources)
    space: dict[str, Any] = Field(default_factory=dict)
    groups: dict[str, list[str]] = Field(default_factory=dict)  # config-group options by name (gepa_lab/sweep/groups.py)
    tied: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)  # axis -> label -> keys it sets (space.py)


class SweepConfig(RunConfig):
    sweep: SweepSpec
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _cost_budget_has_prices(self):
        if self.sweep.budget.cost_usd is not None and not self.has_prices():
            raise ValueError("sweep.budget.cost_usd needs a price: set lm.price_per_1k_prompt_tokens / "
                             "price_per_1k_completion_tokens (or reflection_lm's)")
        return self

    def base_run(self) -> dict[str, Any]:
        """The plain config every trial starts from (its sampled values are written over it)."""
        return self.model_dump(mode="json", exclude={"sweep", "ray"})


store_defaults("sweep_defaults", SweepConfig)
