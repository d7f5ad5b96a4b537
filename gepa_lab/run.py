"""python -m gepa_lab.run: one GEPA compile, no Ray, tracked as `tracking` says. Rerun with the same output_dir to resume."""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from gepa_lab.cli import one_line_errors, quiet_libraries
from gepa_lab.compose import register_resolvers
from gepa_lab.config.load import check_before_start, check_task_imports, load_config, refuse_bad_command
from gepa_lab.config.schema import RunConfig
from gepa_lab.harness import harnessed_trial
from gepa_lab.paths import CONF_DIR
from gepa_lab.progress import ConsoleProgress, scores_table
from gepa_lab.results.report import publish_report
from gepa_lab.tracking import mlflow_sink
from gepa_lab.tracking.wandb_sink import check_wandb_key


def load_run_config(cfg: DictConfig) -> RunConfig:
    config = load_config(cfg, RunConfig)
    check_task_imports(config.task.program, config.task.metric)
    check_wandb_key(config.tracking.wandb)
    return config


def compile_once(config: RunConfig) -> dict:
    """One trial in config.output_dir: its own rollout cache, LM servers, results, W&B and MLflow runs."""
    out = Path(config.output_dir)
    console = Console(stderr=True)
    summary = harnessed_trial(
        config, root=out, trial_id="run", run_name=out.name,
        sinks=[ConsoleProgress(config.optimizer.max_metric_calls, console)],
        on_resume=lambda folder: console.print(f"resuming the run in {folder}"),
    )
    # into the run's own MLflow run, which the harness has ended (its tag holds output_dir as the config gives it)
    publish_report(out, config.tracking, console, wandb_group=None, run_name=f"{out.name} report",
                   mlflow_run=lambda: mlflow_sink.own_trial_run_id(config.tracking.mlflow, out, config.output_dir))
    return summary


register_resolvers()


@hydra.main(config_path=str(CONF_DIR), config_name="run", version_base=None)
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    summary = compile_once(load_run_config(cfg))
    console = Console()
    console.print(scores_table(summary))
    console.print(f"metric calls {summary['metric_calls']}, LM calls {summary['lm_calls']}, {summary['wall_seconds']:.0f}s")
    if summary["user_code_errors"]:
        console.print(escape(f"your program or metric raised {summary['user_code_errors']} times, the first: "
                             f"{summary['first_user_code_error']}; those examples scored optimizer.failure_score "
                             f"(tracebacks in {Path(summary['program_path']).parent / 'compile.log'})"), style="yellow")
    console.print(f"winner: {summary['program_path']}\nsummary: {Path(summary['program_path']).parent / 'summary.json'}")


if __name__ == "__main__":
    refuse_bad_command("run", lambda cfg: check_before_start(load_run_config(cfg)))  # before Hydra's run directory
    main()
