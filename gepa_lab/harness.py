"""One trial, set up alike by every entry: `python -m gepa_lab.run`, a Ray Tune trial, a W&B Sweeps agent's run.

harnessed_trial claims the output folder, installs the rollout cache the config asks for, starts the LM servers
no sweep driver started, builds the standard sinks (Parquet results; W&B and MLflow as `tracking` says), runs
gepa_lab.trial.run_trial and finishes every sink, also when the trial fails. An entry adds only its own sinks.
A resumed trial (its output folder holds its config already) writes on into the W&B and MLflow runs it started
before: their ids are kept in the folder (wandb_run_id, mlflow_run_id)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Sequence

from gepa_lab.config.identity import claim_output_dir
from gepa_lab.config.schema import RunConfig
from gepa_lab.events import EventStream, Sink
from gepa_lab.lm.cache import sync_cache, use_cache
from gepa_lab.results.writer import ResultsWriter
from gepa_lab.servers.redis import cache_service
from gepa_lab.servers.serving import Endpoint, serve_all
from gepa_lab.tracking.mlflow_sink import MlflowSink
from gepa_lab.tracking.wandb_sink import WandbSink
from gepa_lab.trial import run_trial


def harnessed_trial(
    cfg: RunConfig,
    *,
    root: Path,
    trial_id: str,
    sinks: Sequence[Sink] = (),
    sweep_id: str = "",
    params: dict[str, Any] | None = None,
    run_name: str | None = None,
    endpoints: dict[str, Endpoint] | None = None,
    cache: dict[str, Any] | None = None,
    wandb_run: Any = None,
    mlflow_parent_run_id: str | None = None,
    stop_callbacks: list[Callable] | None = None,
    extra_summary: dict[str, Any] | None = None,
    segment: int | None = None,
    on_resume: Callable[[Path], Any] | None = None,
    recorded_config: RunConfig | None = None,
) -> dict[str, Any]:
    """Run cfg as one trial into cfg.output_dir; return its summary.

    root: the folder that holds results/, the rollout cache and the tracking stores (a run's own output_dir;
    a sweep's folder for its trials). sinks: the entry's own, ahead of the standard ones. params: the sweep's
    parameters of this trial (recorded with the results and the summary). run_name: the W&B / MLflow run's name
    (default trial_id). endpoints / cache: what a sweep driver started (LM endpoints by role; use_cache keyword
    arguments from cache_service); None = start it here for this trial. wandb_run: an already-started W&B run to
    write into (a W&B Sweeps agent's, which holds the sweep's parameters); no other W&B run is started then.
    mlflow_parent_run_id: the sweep's MLflow run to nest under; None = a run of its own. on_resume(output_dir)
    is called when output_dir already holds this config's run (the compile resumes). segment: the PBT segment this
    run is (gepa_lab.sweep.pbt), in the summary and every results row; None outside PBT (segment 0 in the results).
    recorded_config: the config the results and trackers record (default cfg): a PBT segment runs its trial's config
    with a budget of GEPA's own count, which is not a parameter the user set."""
    out = Path(cfg.output_dir)
    if claim_output_dir(cfg, out) and on_resume is not None:
        on_resume(out)
    swept = {"params": params} if params is not None else {}
    tracked_config = {**swept, **(recorded_config or cfg).model_dump(mode="json")}
    results = ResultsWriter(root / "results", sweep_id, tracked_config, segment=segment or 0)
    trackers: list[Any] = []
    if wandb_run is not None or cfg.tracking.wandb.enabled:
        trackers.append(WandbSink(cfg.tracking.wandb, root, group=sweep_id or None, run_name=run_name or trial_id,
                                  config=tracked_config, run=wandb_run, run_id_file=out / "wandb_run_id"))
    if cfg.tracking.mlflow.enabled:
        trackers.append(MlflowSink(cfg.tracking.mlflow, root, mlflow_parent_run_id, run_name=run_name or trial_id,
                                   run_id_file=out / "mlflow_run_id"))
    try:
        with contextlib.ExitStack() as started:
            if cache is None:
                cache = started.enter_context(cache_service(cfg.cache, root))
            use_cache(root, **cache)  # dspy's cache lives under root, never in ~/.dspy_cache
            if endpoints is None:
                endpoints = started.enter_context(serve_all({"task": cfg.lm, "reflection": cfg.reflection_lm}))
            events = EventStream(trial_id, [*sinks, results, *trackers])
            segmented = {"segment": segment} if segment is not None else {}
            return run_trial(cfg, endpoints, events, stop_callbacks=stop_callbacks,
                             extra_summary={**swept, **segmented, **(extra_summary or {})})
    finally:
        sync_cache()  # Ray may end a trial's worker without running its exit hooks
        for tracker in trackers:
            tracker.finish()
        if any(isinstance(tracker, WandbSink) and tracker.active for tracker in trackers):
            import wandb

            # end W&B's service process now: when Tune ends a trial's worker, Ray stops that process before the
            # worker's exit hooks run, and W&B's own hook then printed a traceback (a later trial starts a new one)
            wandb.teardown()
