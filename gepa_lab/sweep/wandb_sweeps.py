"""W&B Sweeps for a gepa_lab sweep definition: export it as a W&B sweep YAML, and be its agent's command.

    python -m gepa_lab.sweep.wandb_sweeps export sweep=NAME [key=value ...] [--out FILE]
    wandb sweep FILE                       # creates the sweep on the W&B server, prints SWEEP_ID
    wandb agent ENTITY/PROJECT/SWEEP_ID    # each run calls: python -m gepa_lab.sweep.wandb_sweeps agent sweep=NAME k=v ...

export maps the `sweep:` block of sweeps/NAME.yaml (composed with Hydra exactly as
`python -m gepa_lab.sweep` composes it) onto W&B's sweep config:

    search: grid -> method grid, random -> random, optuna (TPE) -> bayes
    space leaves, named by their dotted key (optimizer.seed):
      grid / choice [a, b] -> values: [a, b]
      uniform [lo, hi]     -> distribution: uniform, min, max
      loguniform [lo, hi]  -> distribution: log_uniform_values, min, max
      randint [lo, hi]     -> distribution: int_uniform, min, max   (both inclusive, as in the Ray sweep)
    a tied axis (sweep.tied.NAME) -> parameter tied.NAME, values: its labels (the agent sets the keys a label names)
    sweep.groups -> parameter groups, values: the combinations' labels (task=banking77,lm=sim: the agent composes
      the trial's config with those group options)
    metric: best_val_score, maximize
    command: [${env}, python, -m, gepa_lab.sweep.wandb_sweeps, agent, sweep=NAME, <export overrides>, ${args_no_hyphens}]

W&B's ${args_no_hyphens} hands each parameter as `key=value`, which is a Hydra override. What W&B
cannot express is printed (on stderr) and left out: max_concurrent (start that many agents),
the sweep budget, the ASHA scheduler, num_samples of a grid (random/bayes: it becomes run_cap),
the searcher seed, per-trial resources.

agent runs exactly one trial through gepa_lab.harness (as a Ray sweep's trial runs) inside wandb.init(): the
trial's parameters are read from wandb.config (where W&B's agent puts them; parameters given only on the
command line are added to wandb.config first). Its output goes to OUTPUT_DIR/trials/<W&B run id>/,
its Parquet rows to OUTPUT_DIR/results/ -- the layout of a Ray sweep, so
`python -m gepa_lab.results OUTPUT_DIR` works on it. OUTPUT_DIR is output_dir when given; under
a W&B agent without one, outputs/wandb-<sweep name>-<W&B sweep id>, shared by all its runs: the disk
rollout cache (OUTPUT_DIR/.dspy_cache) and the embedded MLflow store (OUTPUT_DIR/mlflow.db, one run per
trial, no sweep run above them) too. cache=redis without cache.redis_url starts a redis-server for one
run only: give the agents of a sweep one cache.redis_url to share a Redis cache.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from gepa_lab.compose import compose
from gepa_lab.errors import ConfigError

METHODS = {"grid": "grid", "random": "random", "optuna": "bayes"}
METRIC = {"name": "best_val_score", "goal": "maximize"}
FINAL_METRICS = ("best_val_score", "best_test_score", "seed_val_score", "seed_test_score", "metric_calls",
                 "lm_calls", "num_candidates", "best_candidate_idx", "wall_seconds")
PROGRAM = "gepa_lab/sweep/wandb_sweeps.py"


def _sweep_block(cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from gepa_lab.config.load import validate
    from gepa_lab.sweep.config import SweepSpec

    if "sweep" not in cfg or cfg.sweep is None:
        raise ConfigError("no `sweep:` block: choose a sweep with sweep=NAME (sweeps/NAME.yaml)")
    data = OmegaConf.to_container(cfg.sweep, resolve=True)
    return validate(SweepSpec, data, prefix="sweep").model_dump(mode="json")


# ------------------------------------------------------------------------------------------- export


def wandb_parameter(path: str, kind: str, arg: Any, method: str) -> dict[str, Any]:
    """One space leaf -> one W&B parameter definition."""
    if kind in ("grid", "choice"):
        return {"values": list(arg)}
    if method == "grid":
        raise ConfigError(
            f"sweep.space.{path}: a W&B grid takes only lists of values, not {kind} {list(arg)}; "
            f"use sweep.search=random (or a grid/choice list) to export this sweep"
        )
    low, high = arg
    distribution = {"uniform": "uniform", "loguniform": "log_uniform_values", "randint": "int_uniform"}[kind]
    if kind == "randint":
        low, high = int(low), int(high)
    return {"distribution": distribution, "min": low, "max": high}


def to_wandb(spec: dict[str, Any], command_overrides: list[str], project: str | None = None,
             entity: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """A validated sweep block (SweepSpec as a dict) -> (W&B sweep config, notes on what was dropped or changed)."""
    from gepa_lab.sweep import space

    from gepa_lab.sweep.groups import GROUPS_AXIS, combinations, label

    leaves = space.leaves(spec["space"])
    tied = space.tied_axes(spec.get("tied") or {})
    labels = [label(c) for c in combinations(spec.get("groups") or {})] if spec.get("groups") else []
    if not leaves and not tied and not labels:
        raise ConfigError(f"sweep {spec['name']}: sweep.space, sweep.tied and sweep.groups are empty: nothing to search")
    method = METHODS[spec["search"]]
    doc: dict[str, Any] = {"name": spec["name"], "program": PROGRAM}
    if project:
        doc["project"] = project
    if entity:
        doc["entity"] = entity
    doc["method"] = method
    doc["metric"] = dict(METRIC)
    doc["parameters"] = {path: wandb_parameter(path, kind, arg, method) for path, (kind, arg) in leaves.items()}
    doc["parameters"].update({space.TIED + name: {"values": list(options)} for name, options in tied.items()})
    if labels:
        doc["parameters"][GROUPS_AXIS] = {"values": labels}
    notes: list[str] = []
    if len((spec.get("groups") or {}).get("task") or []) > 1:
        notes.append("changed: W&B ranks all runs by best_val_score, across tasks too: compare runs within a task "
                     "(filter on the groups parameter)")
    n = spec["num_samples"]
    if method == "grid":
        notes.append(f"dropped num_samples={n}: a W&B grid runs each combination once"
                     + (f" (the Ray sweep repeats the grid {n}x)" if n > 1 else " (so does this sweep: nothing lost)"))
        choices = [p for p, (k, _) in leaves.items() if k == "choice"]
        if choices:
            notes.append(f"changed: choice leaves ({', '.join(choices)}) become grid axes under a W&B grid "
                         "(the Ray grid samples one value per repeat)")
    else:
        doc["run_cap"] = n
        notes.append(f"changed: num_samples={n} -> run_cap: {n} (or cap each agent: wandb agent --count N)")
    if spec["search"] == "optuna":
        notes.append("changed: search=optuna (TPE) -> method bayes (W&B's own Bayesian search, not TPE)")
        if spec.get("searcher_seed", 0):
            notes.append(f"dropped searcher_seed={spec['searcher_seed']}: W&B's search takes no seed")
    concurrent = spec.get("max_concurrent")
    notes.append(f"dropped max_concurrent={concurrent}: W&B runs as many trials at once as agents you start"
                 + (f" (start {concurrent})" if concurrent else ""))
    budget = {k: v for k, v in (spec.get("budget") or {}).items() if v is not None}
    notes.append("dropped budget " + (", ".join(f"{k}={v}" for k, v in budget.items()) or "(none set: nothing lost)")
                 + ": W&B has no sweep-wide budget; each trial keeps its own optimizer budget")
    asha = spec.get("asha") or {}
    notes.append(
        f"dropped scheduler={spec.get('scheduler')}"
        + (f" (grace_metric_calls={asha.get('grace_metric_calls')}, reduction_factor={asha.get('reduction_factor')})"
           if spec.get("scheduler") == "asha" else " (fifo: nothing lost)")
        + ": every W&B run goes to its end"
    )
    resources = spec.get("resources") or {}
    shown = ", ".join([f"cpu={resources.get('cpu')}", *(f"{k}={v}" for k, v in (resources.get("custom") or {}).items())])
    notes.append(f"dropped resources ({shown}): a W&B run takes what its agent's machine has")
    doc["command"] = ["${env}", "python", "-m", "gepa_lab.sweep.wandb_sweeps", "agent", *command_overrides, "${args_no_hyphens}"]
    return doc, notes


def export(overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Compose sweep + overrides; return (W&B sweep config, notes on what W&B cannot express)."""
    from omegaconf import OmegaConf

    from gepa_lab.sweep import space

    cfg = compose("sweep", overrides, return_hydra_config=True)
    choice = cfg.hydra.runtime.choices.get("sweep")  # the agent recomposes with the same option
    spec = _sweep_block(cfg)
    base = OmegaConf.to_container(cfg, resolve=False)
    space.check(space.leaves(spec["space"]), spec["search"], base)
    space.check_tied(space.tied_axes(spec["tied"]), space.leaves(spec["space"]), base, list(spec["groups"]))
    if spec["groups"]:  # each combination composes and validates, and a task axis is no search (as in a Ray sweep)
        from gepa_lab.config.load import to_plain, validate
        from gepa_lab.sweep.config import SweepConfig
        from gepa_lab.sweep.groups import check_task_axis, compose_variants

        swept = validate(SweepConfig, to_plain(compose("sweep", overrides)))  # without Hydra's own node
        check_task_axis(swept.sweep, compose_variants(swept, overrides))
    # The agent recomposes the same config: the sweep option first, then the export's own overrides.
    # An output_dir given here is kept, so that every W&B run of the sweep writes under it.
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "sweep"]
    wandb_cfg = OmegaConf.to_container(cfg.tracking, resolve=True).get("wandb", {}) if "tracking" in cfg else {}
    return to_wandb(spec, [f"sweep={choice}", *rest], project=wandb_cfg.get("project"), entity=wandb_cfg.get("entity"))


def to_yaml(doc: dict[str, Any], notes: list[str], source: str) -> str:
    header = [
        f"# W&B sweep exported from {source} by `python -m gepa_lab.sweep.wandb_sweeps export`.",
        "#   wandb sweep THIS_FILE                      -> prints ENTITY/PROJECT/SWEEP_ID",
        "#   wandb agent ENTITY/PROJECT/SWEEP_ID        (one per trial to run at once)",
        *(f"# note: {n}" for n in notes),
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)


# -------------------------------------------------------------------------------------------- agent


class FinalMetrics:
    """Sink: the trial's final scores into the W&B run (history and summary), so the sweep's metric
    (best_val_score) is there whether or not a WandbSink also writes the run. Goes before the WandbSink,
    which finishes the run on trial_finished."""

    def __init__(self, run):
        self.run = run

    def handle(self, event) -> None:
        if event.kind != "trial_finished":
            return
        summary = event.data["summary"]
        final = {k: summary[k] for k in FINAL_METRICS if summary.get(k) is not None}
        self.run.log(final)
        self.run.summary.update(final)


class Preempted:
    """Sink: a trial stopped by SIGTERM or SIGHUP (a scheduler's preemption, not Ctrl-C) marks its W&B run
    preempting, so W&B requeues it under the same run id and the agent that gets it resumes this trial's folder
    (trials/<run id>/gepa). Goes before the WandbSink, which finishes the run on trial_failed."""

    def __init__(self, run):
        self.run = run

    def handle(self, event) -> None:
        from gepa_lab.cli import stop_signal

        if event.kind == "trial_failed" and stop_signal():
            self.run.mark_preempting()


def _get(data: dict, path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        node = node[part]
    return node


def split_labels(overrides: list[str], config: dict[str, Any] | None) -> tuple[list[str], dict[str, str]]:
    """W&B hands a tied axis's label (tied.NAME=LABEL) and the group combination (groups=task=x,lm=y) as overrides, but
    no config key has those names: (the overrides to compose the trial's config with, the labels given). The
    combination's group options join the overrides, as the Ray sweep composes them (wandb.config's label first)."""
    from gepa_lab.sweep.groups import GROUPS_AXIS, override_key

    labels = {override_key(o): o.split("=", 1)[1] for o in overrides if is_label(override_key(o))}
    rest = [o for o in overrides if not is_label(override_key(o))]
    combination = (config or {}).get(GROUPS_AXIS, labels.get(GROUPS_AXIS))
    return [*rest, *(combination.split(",") if combination else [])], labels


def is_label(key: str) -> bool:
    """A tied axis's label or the group combination: a parameter of the sweep, not a config key."""
    from gepa_lab.sweep.groups import GROUPS_AXIS
    from gepa_lab.sweep.space import TIED

    return key == GROUPS_AXIS or key.startswith(TIED)


def _explicit_output_dir(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == "output_dir" for o in overrides)


def agent(overrides: list[str], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one trial of sweep `sweep=NAME` (in overrides) inside wandb.init(config=config).

    Under `wandb agent`, config is None and W&B fills wandb.config with the sweep's parameters;
    tests (W&B Sweeps need the W&B server) inject them as `config`. Returns the trial's summary."""
    import wandb
    from rich.console import Console

    from gepa_lab.config.load import check_task_imports, to_plain, validate
    from gepa_lab.config.schema import RunConfig
    from gepa_lab.harness import harnessed_trial
    from gepa_lab.paths import OUTPUTS_DIR
    from gepa_lab.progress import ConsoleProgress
    from gepa_lab.sweep import space
    from gepa_lab.sweep.config import SweepConfig
    from gepa_lab.sweep.groups import GROUPS_AXIS

    overrides, labels = split_labels(overrides, config)
    cfg = compose("sweep", overrides)
    swept: SweepConfig = validate(SweepConfig, to_plain(cfg))
    leaves = space.leaves(swept.sweep.space)
    tied = space.tied_axes(swept.sweep.tied)
    base = swept.base_run()
    space.check(leaves, swept.sweep.search, base)
    space.check_tied(tied, leaves, base, list(swept.sweep.groups))
    check_task_imports(swept.task.program, swept.task.metric)

    wandb_sweep_id = os.environ.get("WANDB_SWEEP_ID")
    out = Path(swept.output_dir)
    if wandb_sweep_id and not _explicit_output_dir(overrides):
        out = OUTPUTS_DIR / f"wandb-{swept.sweep.name}-{wandb_sweep_id}"  # every run of this W&B sweep
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    wcfg = swept.tracking.wandb
    if os.environ.get("WANDB_MODE"):
        mode = None  # the environment decides (offline in tests, whatever the agent was given)
    elif wandb_sweep_id:
        mode = "online"  # a sweep run must reach the server that hands out its parameters
    else:
        mode = wcfg.mode if wcfg.enabled else "disabled"
    run = wandb.init(
        project=wcfg.project,
        entity=wcfg.entity,
        group=swept.sweep.name,
        job_type="trial",
        dir=os.environ.get("WANDB_DIR") or str(out),
        mode=mode,
        config=copy.deepcopy(config) if config else None,
        settings=wandb.Settings(console="off", silent=True),
    )
    exit_code = 1
    try:
        # Parameters given only on the command line (or left at the sweep's base) join wandb.config,
        # so wandb.config always holds every parameter of this trial; W&B's values win.
        run.config.setdefaults({path: _get(base, path) for path in leaves})
        run.config.setdefaults(labels)
        params = {path: run.config[path] for path in leaves}
        params.update({key: run.config[key] for key in [*(space.TIED + n for n in tied), GROUPS_AXIS]
                       if key in run.config})
        extra = {
            k: v for k, v in dict(run.config).items()
            if k not in leaves and "." in k and not isinstance(v, dict) and space._has_path(base, k)
        }
        params.update(extra)  # a parameter added to the W&B sweep by hand, if it names a config key
        trial_id = run.id
        trial_dir = out / "trials" / trial_id
        data = space.apply(base, space.expand(params, tied))
        data["output_dir"] = str(trial_dir)
        trial_cfg: RunConfig = validate(RunConfig, data)
        console = Console(stderr=True)
        console.print(f"[bold]W&B trial {trial_id}[/] of sweep {swept.sweep.name}: {params} -> {trial_dir}")
        # no sweep driver here: the harness starts this trial's cache service and LM servers itself; the run
        # W&B started (with the sweep's parameters) is the trial's W&B run
        summary = harnessed_trial(
            trial_cfg, root=out, trial_id=trial_id, params={**params, **space.expand(params, tied)}, wandb_run=run,
            sweep_id=f"wandb-{wandb_sweep_id}" if wandb_sweep_id else f"wandb-{swept.sweep.name}",
            sinks=[ConsoleProgress(trial_cfg.optimizer.max_metric_calls, console), FinalMetrics(run), Preempted(run)],
            extra_summary={"wandb_run_id": run.id, "wandb_sweep_id": wandb_sweep_id},
            on_resume=lambda folder: console.print(f"resuming the trial in {folder}"),  # a requeued (preempted) run
        )
        exit_code = 0
        return summary
    finally:
        run.finish(exit_code=exit_code)  # a no-op once the trial's W&B sink closed the run


# --------------------------------------------------------------------------------------------- CLI


def _export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gepa_lab.sweep.wandb_sweeps export",
        description="Write a W&B sweep YAML for sweeps/NAME.yaml (stdout unless --out).",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="sweep=NAME and any Hydra overrides")
    parser.add_argument("--out", help="write the YAML here instead of stdout")
    args = parser.parse_args(argv)
    doc, notes = export(args.overrides)
    option = next(a.split("=", 1)[1] for a in doc["command"] if a.startswith("sweep="))
    text = to_yaml(doc, notes, source=f"sweeps/{option}.yaml")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    print(f"W&B cannot express everything in sweep {doc['name']}:", file=sys.stderr)
    for note in notes:
        print(f"  - {note}", file=sys.stderr)


def _agent_main(argv: list[str]) -> None:
    overrides = [a for a in argv if a]
    bad = [a for a in overrides if "=" not in a]
    if bad:
        raise ConfigError(f"agent takes key=value overrides (sweep=NAME ...), got {' '.join(bad)}")
    from gepa_lab.cli import quiet_libraries

    quiet_libraries()
    summary = agent(overrides)
    print(
        f"trial done: val {summary['seed_val_score']:.3f} -> {summary['best_val_score']:.3f}, "
        f"test {summary['seed_test_score']:.3f} -> {summary['best_test_score']:.3f}; "
        f"{Path(summary['program_path']).parent}"
    )


def main(argv: list[str] | None = None) -> None:
    from gepa_lab.cli import one_line_errors

    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: python -m gepa_lab.sweep.wandb_sweeps export sweep=NAME [key=value ...] [--out FILE]\n"
             "       python -m gepa_lab.sweep.wandb_sweeps agent sweep=NAME [key=value ...]")
    if not argv or argv[0] not in ("export", "agent"):
        print(usage, file=sys.stderr)
        sys.exit(2)
    run = {"export": _export_main, "agent": _agent_main}[argv[0]]
    one_line_errors(run)(argv[1:])


if __name__ == "__main__":
    main()
