"""Population-based search across GEPA trials (sweep.scheduler=pbt, docs/sweeps.md "Population-based search").

Ray Tune's PopulationBasedTraining compares the trials every `sweep.pbt.interval_metric_calls` metric calls each
executed; a weak trial continues from a strong trial's checkpoint (its GEPA state: candidate pool and Pareto front)
with some of its optimizer / reflection-LM client settings perturbed. Here:
- a checkpoint is taken each time GEPA saves its state (on_state_saved), and reported with the score that state holds;
  except GEPA's first save after it loads a state (an exploit's or a resume's), which holds nothing new: reported, it
  let PBT exploit the trial again before it ran a single iteration;
- a trial's run between two exploits is a *segment*, with its own folder trials/TRIAL/segments/NNN (its own config
  there, so a mutated config never meets the folder of another);
- a pause (Tune ends the trial's thread with SystemExit) is recorded as `paused`, and the trial resumes from its state;
- before a segment continues from a saved state, the state must come from the same corpus manifest and the same
  program components;
- metric calls are those each segment executed: the GEPA count in the state minus the count it started from (the
  donor's spend), plus GEPA's uncounted re-scoring of the seed on val at each start from a saved state;
- results/lineage holds, for every candidate of every segment, the trial/segment/index it was first made in."""
from __future__ import annotations

import contextlib
import json
import random
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from gepa_lab import atomic
from gepa_lab.config.load import validate
from gepa_lab.config.schema import RunConfig
from gepa_lab.corpus import ensure_prepared, read_manifest, read_split
from gepa_lab.errors import GepaLabError
from gepa_lab.events import Event
from gepa_lab.harness import harnessed_trial
from gepa_lab.results.writer import write_table
from gepa_lab.sweep import space
from gepa_lab.sweep.config import SweepConfig
from gepa_lab.sweep.stopping import LedgerStop
from gepa_lab.sweep.trainable import FINAL_REPORT, SweepContext, recorded_row, report_recorded, trial_config
from gepa_lab.tasks.task import build_program
from gepa_lab.trial import STATE_FILE, NoOvershoot, TrialPaused

# What PBT may change mid-trial: GEPA's knobs (not its budget or seed) and the reflection LM's client-side settings
# (not which server it talks to). Anything else would change what the inherited state means.
MUTABLE = {
    "optimizer": ("reflection_minibatch_size", "candidate_selection_strategy", "proposal_sampling",
                  "proposal_selection", "acceptance_criterion", "skip_perfect_score", "component_selector",
                  "use_merge", "max_merge_invocations"),
    "reflection_lm": ("temperature", "max_tokens", "timeout_s", "num_retries", "retry_backoff_s", "retry_max_wait_s"),
}
SEGMENT_FILE = "segment.json"
CHECKPOINT_META = "gepa_lab_segment.json"


def check(cfg: SweepConfig) -> None:
    """One clear line for a PBT sweep Ray would refuse, or that could mutate what an inherited state depends on."""
    if cfg.sweep.scheduler != "pbt":
        return
    if cfg.sweep.search not in ("grid", "random"):
        raise GepaLabError(f"sweep.scheduler=pbt takes sweep.search=grid or random, not {cfg.sweep.search} "
                           "(Ray's PopulationBasedTraining refuses other searchers)")
    if cfg.optimizer.max_metric_calls is None:
        raise GepaLabError("sweep.scheduler=pbt needs optimizer.max_metric_calls (each trial's budget in metric calls "
                           "it executes itself)")
    if not cfg.sweep.pbt.mutations:
        raise GepaLabError("sweep.scheduler=pbt needs sweep.pbt.mutations: {KEY: [values]} for what PBT may perturb")
    allowed = [f"{role}.{name}" for role, names in MUTABLE.items() for name in names]
    for key, values in cfg.sweep.pbt.mutations.items():
        if key not in allowed:
            raise GepaLabError(f"sweep.pbt.mutations: {key} may not change mid-trial; mutable keys: {', '.join(allowed)}")
        if not values:
            raise GepaLabError(f"sweep.pbt.mutations.{key}: give at least one value")
        for value in values:
            validate(RunConfig, space.apply(cfg.base_run(), {key: value}), prefix=f"sweep.pbt.mutations.{key}: ")


def scheduler(cfg: SweepConfig, metric: str):
    from ray.tune.schedulers import PopulationBasedTraining

    random.seed(cfg.sweep.searcher_seed)  # PBT draws donors and perturbations from the random module
    return PopulationBasedTraining(
        time_attr="metric_calls",  # the calls each trial executed itself (never a donor's)
        metric=metric,
        mode="max",
        perturbation_interval=cfg.sweep.pbt.interval_metric_calls,
        hyperparam_mutations={key: list(values) for key, values in cfg.sweep.pbt.mutations.items()},
        quantile_fraction=cfg.sweep.pbt.quantile_fraction,
        resample_probability=cfg.sweep.pbt.resample_probability,
    )


def program_components(cfg: RunConfig) -> tuple[str, list[str]]:
    """The corpus manifest's hash and the program's components (its predictors: the keys of a GEPA candidate)."""
    manifest = read_manifest(ensure_prepared(cfg.corpus, quiet=True))
    return manifest["manifest_hash"], sorted(name for name, _ in build_program(cfg.task, manifest).named_predictors())


def val_size(cfg: RunConfig) -> int:
    return len(read_split(ensure_prepared(cfg.corpus, quiet=True), "val"))


@dataclass
class Segment:
    """One run of a trial between exploits. base_calls: GEPA's count in the state it started from (a donor's spend, or
    the trial's own earlier segment's); before: what the trial executed in its earlier segments; rescored: GEPA's
    uncounted seed re-scorings on val in this segment (one per start from a saved state); origins: candidate index ->
    [trial, segment, index] where it was first made; donor: [trial, segment, GEPA count] of the checkpoint an exploit
    started it from."""

    trial_id: str
    number: int
    config: dict[str, Any]
    manifest_hash: str
    components: list[str]
    base_calls: int = 0
    before: int = 0
    rescored: int = 0
    executed: int = 0
    origins: dict[str, list] = field(default_factory=dict)
    limit: int = 0  # GEPA's count at which the trial's own max_metric_calls is spent
    donor: list | None = None

    def budget_stop(self) -> NoOvershoot:
        """No iteration that would take the trial past its own executed-call budget (gepa_lab.trial.NoOvershoot)."""
        opt = RunConfig.model_validate(self.config).optimizer
        return NoOvershoot(self.limit, opt.iteration_cost(val_size(RunConfig.model_validate(self.config))))

    @property
    def dir(self) -> Path:
        return Path(self.config["output_dir"])

    def count(self, gepa_calls: int) -> int:
        """The trial's own executed metric calls when GEPA's state counts gepa_calls."""
        self.executed = self.before + gepa_calls - self.base_calls + self.rescored
        return self.executed

    def save(self) -> None:
        atomic.write_json(self.dir / SEGMENT_FILE, self.__dict__)


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A segment's config minus what open_segment sets itself (its folder, its budget in GEPA's count)."""
    return {**config, "output_dir": None, "optimizer": {**config["optimizer"], "max_metric_calls": None}}


def segments_dir(ctx: SweepContext, trial_id: str) -> Path:
    return Path(ctx.output_dir) / "trials" / trial_id / "segments"


def open_segment(ctx: SweepContext, params: dict[str, Any], trial_id: str, checkpoint_dir: Path | None) -> Segment:
    """The segment this start of the trial runs in: the last one again (a resume of its own state, same config), or a
    new one seeded with the checkpoint's GEPA state (an exploit), after checking that state fits this trial."""
    saved = sorted(segments_dir(ctx, trial_id).glob(f"*/{SEGMENT_FILE}"))
    last = Segment(**json.loads(saved[-1].read_text())) if saved else None
    meta = json.loads((checkpoint_dir / CHECKPOINT_META).read_text()) if checkpoint_dir else None
    donor = [meta["trial_id"], meta["segment"], meta["gepa_calls"]] if meta is not None else None
    cfg = trial_config(ctx, params, trial_id)
    # the trial's own checkpoint, or the donor's again: restarted (a driver resumed) before it had reported its own
    own = meta is None or (meta["trial_id"], meta["segment"]) == (trial_id, last and last.number) or (
        last is not None and last.donor == donor)
    if last is not None and own and comparable(last.config) == comparable(cfg.model_dump(mode="json")):
        if (last.dir / "gepa" / STATE_FILE).exists():
            # GEPA re-scores the seed on val when it loads a state, uncounted: counted here, as the segment starts
            last.rescored += val_size(cfg)
            last.executed += val_size(cfg)
        last.save()
        return last
    number = last.number + 1 if last else 0
    before = last.executed if last else 0
    manifest_hash, components = program_components(cfg)
    seg_dir = segments_dir(ctx, trial_id) / f"{number:03d}"
    # a segment exists once its segment.json does: a folder without one was left by a process killed while making it
    # (a donor's GEPA state copied in, maybe), and GEPA would load that state into this segment
    shutil.rmtree(seg_dir, ignore_errors=True)
    base_calls, rescored, origins = 0, 0, {}
    if meta is not None:
        if (meta["manifest_hash"], meta["components"]) != (manifest_hash, components):
            raise GepaLabError(f"trial {trial_id} cannot continue from trial {meta['trial_id']}'s GEPA state: it was made "
                               f"on corpus manifest {meta['manifest_hash']} with components {meta['components']}, this "
                               f"trial has {manifest_hash} with {components}")
        (seg_dir / "gepa").mkdir(parents=True, exist_ok=True)
        shutil.copy2(checkpoint_dir / STATE_FILE, seg_dir / "gepa" / STATE_FILE)
        base_calls, rescored, origins = meta["gepa_calls"], val_size(cfg), meta["origins"]
    # the trial's own budget, in GEPA's count that starts from base_calls: a stop condition (budget_stop); the config's
    # max_metric_calls must still pay for one iteration from scratch to validate, so it is at least that
    limit = base_calls + cfg.optimizer.max_metric_calls - before - rescored
    val = val_size(cfg)
    data = cfg.model_dump(mode="json")
    data["output_dir"] = str(seg_dir)
    data["optimizer"]["max_metric_calls"] = max(limit, val + cfg.optimizer.iteration_cost(val))
    segment = Segment(trial_id, number, data, manifest_hash, components, base_calls, before, rescored, before + rescored,
                      origins, limit, donor)
    seg_dir.mkdir(parents=True, exist_ok=True)
    segment.save()
    return segment


class SegmentSink:
    """Takes a checkpoint each time GEPA saves its state and reports it to Tune with that state's best val score and
    the trial's executed metric calls (also to the ledger); keeps the segment's lineage in results/lineage."""

    def __init__(self, ctx: SweepContext, segment: Segment):
        self.ctx = ctx
        self.segment = segment
        self.attempt = uuid.uuid4().hex[:8]
        self.tokens = self.cost = 0.0
        self.loaded = (segment.dir / "gepa" / STATE_FILE).exists()  # GEPA's first save will be the state it loaded

    def handle(self, event: Event) -> None:
        d = event.data
        if event.kind == "candidate":
            self.segment.origins.setdefault(str(d["candidate_idx"]), [event.trial_id, self.segment.number, d["candidate_idx"]])
        elif event.kind == "iteration":
            self.tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in d["usage"].values())
            self.cost = sum(r.get("cost_usd") or 0.0 for r in d["usage"].values())
        elif event.kind == "state_saved":
            self.checkpoint(event.trial_id, Path(d["run_dir"]))

    def checkpoint(self, trial_id: str, run_dir: Path) -> None:
        from gepa.core.state import GEPAState

        state = GEPAState.load(str(run_dir))
        executed = self.segment.count(state.total_num_evals)
        self.record()
        if self.ctx.ledger is not None:
            self.ctx.ledger.record.remote(trial_id, self.attempt, executed, int(self.tokens), self.cost)
        if self.loaded:
            self.loaded = False
            return
        folder = Path(tempfile.mkdtemp(prefix="gepa_lab-pbt-"))
        try:
            shutil.copy2(run_dir / STATE_FILE, folder / STATE_FILE)
            atomic.write_json(folder / CHECKPOINT_META, {
                "trial_id": trial_id, "segment": self.segment.number, "gepa_calls": state.total_num_evals,
                "manifest_hash": self.segment.manifest_hash, "components": sorted(state.program_candidates[0]),
                "origins": self.segment.origins})
            best = max(state.get_program_average_val_subset(i)[0] for i in range(len(state.program_candidates)))
            try:
                tune.report({"best_val_score": best, "metric_calls": executed, "iteration": state.i + 1},
                            checkpoint=tune.Checkpoint.from_directory(str(folder)))
            except SystemExit as exc:  # Tune paused this trial (PBT): a pause, not a failure
                raise TrialPaused(exc.code) from exc
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # Tune keeps its own copy

    def record(self) -> None:
        """The segment's file and its lineage rows, rewritten whole: unique on (trial, segment, index) by construction."""
        self.segment.save()
        write_table(Path(self.ctx.output_dir) / "results" / "lineage" / f"{self.segment.trial_id}-{self.segment.number:03d}.parquet",
                    "lineage", [{"sweep_id": self.ctx.sweep_id, "trial_id": self.segment.trial_id, "segment": self.segment.number,
                                 "candidate_idx": int(idx), "origin_trial_id": origin[0], "origin_segment": origin[1],
                                 "origin_candidate_idx": origin[2]} for idx, origin in self.segment.origins.items()])


def pbt_trial(params: dict[str, Any], ctx: SweepContext) -> None:
    """The Tune function of a PBT sweep: run (or resume, or continue from a donor's state) one segment of the trial."""
    trial_id = tune.get_context().get_trial_id()
    ctx.node_checks.check_here()  # as gepa_trial: the node may have joined after the sweep's checks
    if report_recorded(ctx, trial_id):
        return
    checkpoint = tune.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as checkpoint_dir:
        segment = open_segment(ctx, params, trial_id, Path(checkpoint_dir) if checkpoint_dir else None)
    cfg = RunConfig.model_validate(segment.config)
    sink = SegmentSink(ctx, segment)
    sink.record()  # the inherited candidates are the segment's from its start
    summary = harnessed_trial(
        cfg, root=Path(ctx.output_dir), trial_id=trial_id, sweep_id=ctx.sweep_id,
        params={**params, **space.expand(params, ctx.tied)}, sinks=[sink],
        endpoints={"task": ctx.endpoints[cfg.lm.server_key()], "reflection": ctx.endpoints[cfg.reflection_lm.server_key()]},
        cache=ctx.cache, mlflow_parent_run_id=ctx.mlflow_parent_run_id,
        stop_callbacks=[segment.budget_stop(), *([LedgerStop(ctx.ledger, trial_id)] if ctx.ledger is not None else [])],
        segment=segment.number, recorded_config=trial_config(ctx, params, trial_id),
    )
    executed = segment.count(summary["metric_calls"])
    # the trial's record is its last segment's: the sweep crowns its winner from the trial's folder
    trial_dir = Path(ctx.output_dir) / "trials" / trial_id
    atomic.write_json(trial_dir / "summary.json", {**summary, "metric_calls": executed})
    shutil.copy2(segment.dir / "config.json", trial_dir / "config.json")
    sink.record()
    if ctx.ledger is not None:
        ctx.ledger.record.remote(trial_id, sink.attempt, executed, int(sink.tokens), sink.cost)
    # the trial's row counts what it executed, not GEPA's count that includes a donor's spend
    row = recorded_row(ctx, trial_id)
    write_table(Path(ctx.output_dir) / "results" / "trials" / f"{trial_id}.parquet", "trials", [{**row, "metric_calls": executed}])
    tune.report({**{k: summary[k] for k in FINAL_REPORT}, "metric_calls": executed})

