"""The sweep: validate everything, start what it needs, run the trials on Ray Tune, crown a winner."""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray import tune
from rich.console import Console

from gepa_lab import atomic
from gepa_lab.config.identity import git_state
from gepa_lab.config.load import check_task_imports, validate
from gepa_lab.config.schema import RunConfig
from gepa_lab.corpus import ensure_prepared
from gepa_lab.corpus.config import CorpusConfig
from gepa_lab.errors import GepaLabError
from gepa_lab.events import INTERVALS
from gepa_lab.lm.cache import shared_cache_stats, use_cache
from gepa_lab.servers.redis import cache_service
from gepa_lab.lm.config import LMConfig
from gepa_lab.servers.serving import check_external, serve_all
from gepa_lab.results import query
from gepa_lab.results.compact import compact
from gepa_lab.results.report import publish_report
from gepa_lab.results.writer import utc, write_table
from gepa_lab.sweep import groups, lm_load, pbt, space
from gepa_lab.servers.ray_cluster import check_trial_nodes, code_to_ship, ray_session
from gepa_lab.sweep.config import SweepConfig
from gepa_lab.sweep.node_gate import StopOnRefusedNode, refusal_as_one_line
from gepa_lab.sweep.progress import LiveProgress
from gepa_lab.sweep.stopping import LEDGER_FILE, GracefulASHA, Ledger, SweepLedger, ledger_name
from gepa_lab.sweep.trainable import SweepContext, gepa_trial
from gepa_lab import promote
from gepa_lab.tracking import mlflow_sink, registry, wandb_sink

METRIC = "best_val_score"


Variants = dict[str, dict[str, Any]]  # combination label -> its plain run config (gepa_lab/sweep/groups.py)


def check(cfg: SweepConfig, variants: Variants | None = None) -> dict[str, tuple[str, Any]]:
    """Everything that can be wrong before Ray starts: the space, the tied axes, the group combinations, and every
    trial config they can produce, for each combination (variants; default: the base config alone)."""
    variants = variants or groups.single(cfg)
    pbt.check(cfg)
    leaves = space.leaves(cfg.sweep.space)
    tied = space.tied_axes(cfg.sweep.tied)
    groups.check_task_axis(cfg.sweep, variants)
    groups.check_corpora(variants)
    for base in variants.values():
        space.check(leaves, cfg.sweep.search, base)
        space.check_tied(tied, leaves, base, list(cfg.sweep.groups))
    for program, metric in dict.fromkeys((v["task"]["program"], v["task"]["metric"]) for v in variants.values()):
        check_task_imports(program, metric)
    for base in variants.values():
        validate(RunConfig, base)
        for path, (kind, arg) in leaves.items():
            for value in space.probes(kind, arg):
                validate(RunConfig, space.apply(base, {path: value}), prefix="")
        for options in tied.values():
            for values in options.values():
                validate(RunConfig, space.apply(base, values), prefix="")
    return leaves


def preflight(cfg: SweepConfig, variants: Variants | None = None) -> tuple[dict[str, tuple[str, Any]], dict[str, LMConfig]]:
    """check(), then every external LM endpoint must answer: all of it before Ray starts. Managed servers are
    checked once started, before any trial."""
    variants = variants or groups.single(cfg)
    leaves = check(cfg, variants)
    lms = lm_configs(cfg, leaves, variants)
    check_external(lms)
    return leaves, lms


def planned_trials(cfg: SweepConfig, leaves: dict, variants: Variants | None = None) -> int:
    grid = math.prod(len(arg) for kind, arg in leaves.values() if kind == "grid")
    if cfg.sweep.search == "grid":  # tied axes are grids there (choices under random and Optuna)
        grid *= math.prod(len(options) for options in cfg.sweep.tied.values())
    if cfg.sweep.search != "optuna":  # every group combination runs (Optuna picks among them)
        grid *= len(variants or groups.single(cfg))
    return grid * cfg.sweep.num_samples


def lm_configs(cfg: SweepConfig, leaves: dict, variants: Variants | None = None,
               roles: tuple[str, ...] = ("lm", "reflection_lm")) -> dict[str, LMConfig]:
    """Every LM server a trial may talk to in `roles`, in every group combination, keyed by LMConfig.server_key()
    (trials look their endpoint up by it; client-side settings such as temperature, even sampled from a range, share
    one server). Each combination of the discrete axes that set keys of those roles is looked at."""
    def touches(key: str) -> bool:
        return key.split(".")[0] in roles

    axes = [[{path: value} for value in arg] for path, (kind, arg) in leaves.items()
            if touches(path) and kind in ("grid", "choice")]
    axes += [list(options.values()) for options in space.tied_axes(cfg.sweep.tied).values()
             if any(touches(key) for key in next(iter(options.values())))]
    configs: dict[str, LMConfig] = {}
    for base in (variants or groups.single(cfg)).values():
        for chosen in itertools.product(*axes):
            trial = RunConfig.model_validate(space.apply(base, {k: v for values in chosen for k, v in values.items()}))
            for c in (getattr(trial, role) for role in roles):
                configs[c.server_key()] = c
    return configs


def searcher(cfg: SweepConfig):
    if cfg.sweep.search != "optuna":
        return None  # grid and random: Tune's BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=METRIC, mode="max", seed=cfg.sweep.searcher_seed)


def calls_per_trial(variants: Variants) -> int | None:
    """The most metric calls a trial may spend, over every group combination (None: a budget set otherwise)."""
    budgets = [v["optimizer"]["max_metric_calls"] for v in variants.values()]
    return None if None in budgets else max(budgets)


def scheduler(cfg: SweepConfig, sweep_id: str, variants: Variants | None = None):
    if cfg.sweep.scheduler == "fifo":
        return None
    if cfg.sweep.scheduler == "pbt":
        return pbt.scheduler(cfg, METRIC)
    variants = variants or groups.single(cfg)
    return GracefulASHA(
        sweep_id,
        time_attr="metric_calls",  # compare trials at equal metric calls, not wall time
        metric=METRIC,
        mode="max",
        max_t=calls_per_trial(variants) or 10**9,
        grace_period=cfg.sweep.asha.grace_metric_calls,
        reduction_factor=cfg.sweep.asha.reduction_factor,
    )


def eval_threads(task_lms: dict[str, LMConfig], concurrent: int) -> dict[str, int]:
    """Evaluation threads per trial, per task LM server: a share of its total capacity (gepa_lab.sweep.lm_load)."""
    return {key: lm_load.eval_threads(lm.capacity, concurrent) for key, lm in task_lms.items()}


def trial_resources(cfg: SweepConfig) -> dict[str, float]:
    """What one trial holds, in Ray's resource names: a node without it never runs a trial."""
    return {"CPU": cfg.sweep.resources.cpu, **cfg.sweep.resources.custom}


def run_sweep(cfg: SweepConfig, variants: Variants | None = None) -> dict[str, Any]:
    """variants: each config-group combination's composed config (groups.compose_variants); default: no groups."""
    started = time.time()
    out = Path(cfg.output_dir).resolve()
    variants = variants or groups.single(cfg)
    if cfg.sweep.groups and (kept := groups.saved(out)) is not None:  # a resume runs the set it started with
        if kept != variants:
            Console(stderr=True).print(f"the config-group combinations composed now differ from those this sweep "
                                       f"started with: resuming with those saved in {out / groups.VARIANTS_FILE}")
        variants = kept
    leaves, lms = preflight(cfg, variants)
    task_lms = lm_configs(cfg, leaves, variants, roles=("lm",))
    out.mkdir(parents=True, exist_ok=True)
    sweep_id = out.name
    console = Console(stderr=True)
    tracking = cfg.tracking
    if cfg.sweep.groups:
        groups.save(out, variants)
    corpora = {v["corpus"]["name"]: v["corpus"] for v in variants.values()}  # one config per name (check_corpora)
    for corpus in corpora.values():  # once, here: trials starting together must not all prepare one
        ensure_prepared(CorpusConfig.model_validate(corpus))
    user_code = list(dict.fromkeys(path for v in variants.values() for path in (v["task"]["program"], v["task"]["metric"])))
    if tracking.wandb.enabled:
        os.environ.update(wandb_sink.wandb_env(tracking.wandb, out))  # before ray.init: workers inherit it
    # the winner's load-back check, in a process that imports what it needs while Ray starts (a core is idle then)
    load_back = registry.LoadBackProcess() if tracking.mlflow.enabled else None
    parent_run = None
    try:
        with ray_session(cfg.ray, out, py_modules=code_to_ship(user_code, cfg.ray.py_modules),
                         trial_resources=trial_resources(cfg)), cache_service(cfg.cache, out) as cache, \
                serve_all(lms, workdir=out / "lm", shared=True) as endpoints:
            node_checks = check_trial_nodes(out, [e.api_base for e in endpoints.values()], trial_resources(cfg))
            use_cache(out, **cache)  # the driver's own LM calls (the winner's load-back) share it too
            concurrent = cfg.sweep.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1) // cfg.sweep.resources.cpu))
            if tracking.mlflow.enabled:
                parent_run = mlflow_sink.start_parent_run(tracking.mlflow, out, cfg.sweep.name, {"sweep": cfg.sweep.model_dump(mode="json")},
                                                          run_id_file=out / "mlflow_run_id")  # a rerun reopens it
            budget = cfg.sweep.budget.model_dump()
            ctx = SweepContext(
                sweep_id=sweep_id,
                output_dir=str(out),
                base_config=cfg.base_run(),
                variants=variants,
                tied=space.tied_axes(cfg.sweep.tied),
                endpoints=endpoints,
                eval_threads=eval_threads(task_lms, concurrent),
                node_checks=node_checks,
                # restored from the sweep's folder on a rerun: the budget covers the sweep before and after a crash
                ledger=SweepLedger.options(name=ledger_name(sweep_id)).remote(budget, str(out / LEDGER_FILE))
                if any(budget.values()) or cfg.sweep.scheduler in ("asha", "pbt") else None,
                mlflow_parent_run_id=parent_run,
                cache=cache,
            )
            planned = planned_trials(cfg, leaves, variants)
            console.print(f"[bold]sweep {cfg.sweep.name}[/]: {planned} trials, {concurrent} at a time -> {out}")
            with lm_load.LoadProbe([endpoints[key] for key in task_lms]) as probe:
                fit(cfg, ctx, out, concurrent, LiveProgress(planned, calls_per_trial(variants), console))
            load = lm_load.lm_load(probe, query.connect([out]), capacity=sum(lm.capacity for lm in task_lms.values()),
                                   threads=ctx.eval_threads if cfg.eval.num_threads is None else {"": cfg.eval.num_threads})
            summary = summarize(cfg, out, sweep_id, started, parent_run, endpoints, cache, load_back, load)
        if parent_run:
            mlflow_sink.end_parent_run(tracking.mlflow, out, parent_run, summary)
    except BaseException as exc:
        if parent_run:  # it must not look like it is still going (a rerun reopens it)
            mlflow_sink.end_parent_run(tracking.mlflow, out, parent_run, status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        if load_back is not None:
            load_back.close()
    compact_results(out / "results", console)
    # last: it reads the final results; the parent run has ended, MLflow still takes artifacts into it
    publish_report(out, tracking, console, mlflow_run=lambda: parent_run, wandb_group=sweep_id,
                   run_name=f"{cfg.sweep.name} report")
    return summary


def compact_results(results_root: Path, console: Console) -> None:
    """Fold the trials' many small result files into one per table, once nothing writes them, so queries stay fast.
    The results are whole without it: a failure is said, not raised."""
    try:
        compact(results_root)
    except (OSError, GepaLabError, pa.ArrowException) as exc:
        console.print(f"[red]results not compacted[/] (they stay complete, in more files): {type(exc).__name__}: {exc}")


def skip_callback_telemetry() -> None:
    """Tune tags each run's callbacks for Ray's usage telemetry, and to name them first imports Ray's MLflow, W&B,
    Comet and Aim integrations (and so MLflow and W&B): about 3 s of CPU per sweep, mostly for libraries the sweep
    may not use, for a tag that affects nothing the sweep does."""
    from ray.air._internal import usage

    usage.tag_callbacks = lambda callbacks: False


def fit(cfg: SweepConfig, ctx: SweepContext, out: Path, concurrent: int, progress: LiveProgress) -> None:
    skip_callback_telemetry()
    trainable = tune.with_resources(
        tune.with_parameters(pbt.pbt_trial if cfg.sweep.scheduler == "pbt" else gepa_trial, ctx=ctx),
        {"cpu": cfg.sweep.resources.cpu, **cfg.sweep.resources.custom},
    )
    tune_dir = out / "tune"
    if tune.Tuner.can_restore(str(tune_dir)):
        Console(stderr=True).print(f"resuming the sweep in {out}")
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space.to_tune(space.leaves(cfg.sweep.space), ctx.tied,
                                      list(ctx.variants) if cfg.sweep.groups else None, cfg.sweep.search),
            tune_config=tune.TuneConfig(
                num_samples=cfg.sweep.num_samples,
                max_concurrent_trials=concurrent,
                search_alg=searcher(cfg),
                scheduler=scheduler(cfg, ctx.sweep_id, ctx.variants),
                reuse_actors=True,  # a trial after another reuses its worker: no second start and imports
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(out),
                verbose=0,
                callbacks=[progress, StopOnRefusedNode()],
                # a trial whose worker died (killed, out of memory) runs again and resumes from its GEPA state
                failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
            ),
        )
    # Ctrl-C raises KeyboardInterrupt out of fit() (TUNE_DISABLE_SIGINT_HANDLER, gepa_lab/__init__.py): the sweep
    # stops everything it started; Tune's experiment state and each trial's GEPA state let a rerun resume.
    with refusal_as_one_line():  # a trial's node refused it: one line, resumable
        tuner.fit()
    mark_unfinished(out / "results")


def mark_unfinished(results: Path) -> None:
    """After fit() nothing runs: a trial whose row still says running lost its worker without a word (killed,
    out of memory); Tune's own log in tune/ tells more. A SIGKILL mid-write leaves a temp file: not a row."""
    for path in query.parquet_files(results, "trials"):
        row = pq.read_table(path).to_pylist()[0]
        if row["status"] == "running":
            write_table(path, "trials", [{**row, "status": "failed", "ended_at": utc(time.time()),
                                         "error": "the trial's worker ended without reporting (see tune/ logs)"}])


def gain_confirmation(winner: dict[str, Any]) -> dict[str, Any]:
    """How much of the winner's val gain over the seed the test split confirms. The winner is the best of N trials
    on val, so its val gain is optimistic: val_gain_unconfirmed = val_gain - test_gain is the part test did not
    repeat (negative: test gained more), and test_gain_ci95_above_zero says whether the paired 95% interval of the
    test gain lies above 0 (None without intervals)."""
    val_gain = winner["best_val_score"] - winner["seed_val_score"]
    test_gain = winner["best_test_score"] - winner["seed_test_score"]
    gain_ci = winner.get("test_gain_ci95")
    return {
        **{key: winner.get(key) for key in INTERVALS},
        "val_gain": val_gain,
        "test_gain": test_gain,
        "val_gain_unconfirmed": val_gain - test_gain,
        "test_gain_ci95_above_zero": gain_ci[0] > 0 if gain_ci else None,
    }


def fault_point(name: str) -> None:
    """Tests crash the driver here (GEPA_LAB_FAULT_AT=name), as a kill at that moment would, to prove that a rerun
    of the same command finishes the job. SystemExit: no `except Exception` on the way catches it."""
    if os.environ.get("GEPA_LAB_FAULT_AT") == name:
        raise SystemExit(f"fault injected at {name} (GEPA_LAB_FAULT_AT)")


def winner_test_scores(out: Path, trial_id: str, trial_summary: dict[str, Any]) -> dict[str, float]:
    """The winner's per-example test scores {example_id: score}, as its trial recorded them: what the promotion
    guard pairs with the champion's. A PBT trial's summary is its last segment's, which scored its winner on test
    (an earlier segment's candidate of the same index is another candidate)."""
    rows = query.connect([out]).execute(
        "SELECT example_id, score FROM evaluations WHERE trial_id = ? AND segment = ? AND split = 'test' "
        "AND candidate_idx = ?",
        [trial_id, trial_summary.get("segment", 0), trial_summary.get("best_candidate_idx") or 0]).fetchall()
    return {str(example_id): float(score) for example_id, score in rows}


def crown(cfg: SweepConfig, out: Path, trial_id: str, parent_run: str | None, endpoints,
          load_back: registry.LoadBackProcess | None, own_name: bool) -> dict[str, Any]:
    """One task's winner: its scores and gain, and (MLflow on) its registration. own_name: the sweep has several
    tasks, so a user-set registered_model_name gets the task's name appended (the default name holds it already)."""
    trial_dir = out / "trials" / trial_id
    trial_summary = json.loads((trial_dir / "summary.json").read_text())
    trial_config = json.loads((trial_dir / "config.json").read_text())["config"]
    winner: dict[str, Any] = {
        "best_trial_id": trial_id,
        "best_config": trial_config,
        "best_params": trial_summary.get("params", {}),
        **{k: trial_summary[k] for k in ("best_val_score", "best_test_score", "seed_val_score", "seed_test_score")},
        **gain_confirmation(trial_summary),
        "registered_model": None,
    }
    if parent_run:
        run_cfg = RunConfig.model_validate(trial_config)
        mlflow_cfg = cfg.tracking.mlflow
        if own_name and mlflow_cfg.registered_model_name:
            mlflow_cfg = mlflow_cfg.model_copy(
                update={"registered_model_name": f"{mlflow_cfg.registered_model_name}-{run_cfg.task.name}"})
        task_endpoint = endpoints[run_cfg.lm.server_key()]
        try:
            fault_point("registration")
            winner["registered_model"] = registry.register_winner(
                mlflow_cfg, out, parent_run, trial_summary, trial_config,
                # a server itself, not the router: the check runs with the key, in a process with no token
                load_back={"api_base": task_endpoint.direct_base(), "process": load_back},
                test_scores=winner_test_scores(out, trial_id, trial_summary),
                promote=promote.guarded_promotion(registry.registry_uri(mlflow_cfg, out), api_base=task_endpoint.direct_base()),
            )
            fault_point("registered")
        except Exception as exc:  # the sweep's results stand; say loudly that the winner is not registered
            Console(stderr=True).print(f"[red]the winner of {run_cfg.task.name} was not registered[/]: {type(exc).__name__}: {exc}")
            winner["registration_error"] = f"{type(exc).__name__}: {exc}"
    return winner


def budget_spent(cfg: SweepConfig, out: Path) -> dict:
    """{"budget": {"limits": the sweep budgets set, "spent": what the ledger counted}} when the sweep kept a ledger."""
    if not (out / LEDGER_FILE).exists():
        return {}
    limits = {name: limit for name, limit in cfg.sweep.budget.model_dump().items() if limit is not None}
    return {"budget": {"limits": limits, "spent": Ledger(limits, str(out / LEDGER_FILE)).spent()}}


def stop_causes(con) -> dict[str, int]:
    """What ended trials early or kept them from starting, by cause: 'sweep budget NAME', 'ASHA', ... -> trials.
    A reason is the cause, then its particulars (after '=' for a budget, ':' otherwise)."""
    causes: dict[str, int] = {}
    for (reason,) in con.sql("SELECT error FROM trials WHERE status IN ('stopped', 'skipped')").fetchall():
        cause = (reason or "unknown").split("=" if (reason or "").startswith("sweep budget ") else ":", 1)[0]
        causes[cause] = causes.get(cause, 0) + 1
    return causes


def summarize(cfg: SweepConfig, out: Path, sweep_id: str, started: float, parent_run: str | None, endpoints, cache: dict,
              load_back: registry.LoadBackProcess | None = None, load: dict | None = None) -> dict:
    """summary.json: `winners` holds each task's winner (best val within the task; scores are never compared across
    tasks); with one task its fields are also the summary's own (best_trial_id, ...), as before tasks were swept."""
    con = query.connect([out])
    counts = dict(con.sql("SELECT status, count(*) FROM trials GROUP BY status").fetchall())
    best = query.best_trials(con)
    # the load-back process started with the sweep serves the first winner; each other one starts its own
    winners = {task: crown(cfg, out, row["trial_id"], parent_run, endpoints, load_back if i == 0 else None, len(best) > 1)
               for i, (task, row) in enumerate(best.items())}
    summary: dict[str, Any] = {
        "sweep": cfg.sweep.name,
        "sweep_id": sweep_id,
        "output_dir": str(out),
        "trials": {"total": sum(counts.values()), **{s: counts.get(s, 0) for s in ("completed", "failed", "stopped", "skipped")}},
        "best_trial_id": None,
        "tracking_uri": mlflow_sink.tracking_uri(cfg.tracking.mlflow, out) if cfg.tracking.mlflow.enabled else None,
        "registered_model": None,
        "winners": winners,
        **git_state(),  # the driver's code (each trial records its own)
    }
    if len(winners) == 1:
        summary.update(next(iter(winners.values())))
    summary.update(budget_spent(cfg, out), stopped_by=stop_causes(con))
    summary["lm_cache"] = shared_cache_stats(out, **cache)  # requests the sweep's trials did not have to send
    summary.update(load or {})  # lm_utilization and what it was computed from
    summary["wall_seconds"] = round(time.time() - started, 3)
    write_table(out / "results" / "sweeps" / f"{sweep_id}.parquet", "sweeps", [{
        "sweep_id": sweep_id, "name": cfg.sweep.name, "started_at": utc(started), "ended_at": utc(time.time()),
        "trials_total": summary["trials"]["total"], "trials_completed": summary["trials"]["completed"],
        "trials_failed": summary["trials"]["failed"], "best_trial_id": summary["best_trial_id"],
        "best_val_score": summary.get("best_val_score"), "best_test_score": summary.get("best_test_score"),
        "summary_json": json.dumps(summary, default=str),
        **git_state(),
    }])
    atomic.write_json(out / "summary.json", summary)
    return summary

