"""python -m gepa_lab.run: one GEPA compile, no Ray. Rerun with the same output_dir to resume."""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig
from rich.console import Console

from gepa_lab.cli import one_line_errors, quiet_libraries
from gepa_lab.config.identity import claim_output_dir
from gepa_lab.compose import register_resolvers
from gepa_lab.config.load import check_task_imports, to_plain, validate
from gepa_lab.config.schema import RunConfig
from gepa_lab.events import EventStream
from gepa_lab.lm.cache import use_cache
from gepa_lab.servers.redis import cache_service
from gepa_lab.servers.serving import serve_all
from gepa_lab.paths import CONF_DIR
from gepa_lab.progress import ConsoleProgress, scores_table
from gepa_lab.results.writer import ResultsWriter
from gepa_lab.trial import run_trial


def load_run_config(cfg: DictConfig) -> RunConfig:
    config = validate(RunConfig, to_plain(cfg))
    check_task_imports(config.task.program, config.task.metric)
    return config


def compile_once(config: RunConfig) -> dict:
    out = Path(config.output_dir)
    resumed = claim_output_dir(config, out)
    console = Console(stderr=True)
    if resumed:
        console.print(f"resuming the run in {out}")
    events = EventStream("run", [ConsoleProgress(config.optimizer.max_metric_calls, console), ResultsWriter(out / "results")])
    with cache_service(config.cache, out) as cache, serve_all({"task": config.lm, "reflection": config.reflection_lm}) as endpoints:
        use_cache(out, **cache)  # dspy's cache lives inside output_dir, never in ~/.dspy_cache
        return run_trial(config, endpoints, events)


register_resolvers()


@hydra.main(config_path=str(CONF_DIR), config_name="run", version_base=None)
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    summary = compile_once(load_run_config(cfg))
    console = Console()
    console.print(scores_table(summary))
    console.print(f"metric calls {summary['metric_calls']}, LM calls {summary['lm_calls']}, {summary['wall_seconds']:.0f}s")
    console.print(f"winner: {summary['program_path']}\nsummary: {Path(summary['program_path']).parent / 'summary.json'}")


if __name__ == "__main__":
    main()
