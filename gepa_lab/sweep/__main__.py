"""python -m gepa_lab.sweep sweep=NAME [key=value ...] [output_dir=PATH]

Exit status: 0 no trial failed; 3 some trials failed (the others' results and winner stand); 4 no trial completed;
2 refused (bad config, one line); 130/143/129 stopped by Ctrl-C/SIGTERM/SIGHUP (docs/runs.md#stop-signals-and-exit-codes)."""
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from gepa_lab.cli import one_line_errors, quiet_libraries
from gepa_lab.compose import register_resolvers
from gepa_lab.config.load import check_before_start, load_config, refuse_bad_command
from gepa_lab.errors import GepaLabError, TrialFailed
from gepa_lab.paths import CONF_DIR
from gepa_lab.progress import with_interval
from gepa_lab.results.query import connect, leaderboard_table
from gepa_lab.sweep.config import SweepConfig
from gepa_lab.sweep.groups import compose_variants
from gepa_lab.sweep.lm_load import utilization_line

register_resolvers()


def confirmation_line(summary: dict) -> str:
    """What test says of the winner's val gain (gepa_lab.sweep.driver.gain_confirmation)."""
    gain = with_interval(summary["test_gain"], summary.get("test_gain_ci95"), signed=True)
    verdict = {True: "its 95% interval lies above 0", False: "its 95% interval includes 0: not told apart from no gain",
               None: "no interval (no test examples)"}[summary.get("test_gain_ci95_above_zero")]
    unconfirmed = summary["val_gain_unconfirmed"]
    rest = (f"test did not confirm {unconfirmed:.3f} of it (the winner was picked for its val score, which flatters it)"
            if unconfirmed > 0 else f"test confirmed all of it (and {-unconfirmed:.3f} more)")
    return f"test gain {gain} ({verdict}); val gain {summary['val_gain']:+.3f}: {rest}"


SOME_TRIALS_FAILED = 3


def exit_status(trials: dict[str, int]) -> int:
    """0: no trial failed (stopped and skipped ones are the sweep's own doing); 3: some failed, others completed or
    were stopped with a result; 4 (a failed run's status): none did."""
    if not trials.get("failed"):
        return 0
    return SOME_TRIALS_FAILED if trials.get("completed", 0) + trials.get("stopped", 0) else TrialFailed.exit_code


class TrialFailuresInOneLine(logging.Filter):
    """Tune logs each failed trial with its traceback. A trial that failed for a reason it states in one line (a
    GepaLabError: an LM endpoint gone, ...) is logged with that line instead; other failures keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, GepaLabError):  # Ray's RayTaskError is also an instance of the trial's exception class
            record.msg, record.args, record.exc_info = f"{record.getMessage()}: {getattr(exc, 'cause', exc)}", (), None
        return True


def budget_line(summary: dict) -> str:
    """'; budget lm_tokens 123,456 of 120,000; stopped by: sweep budget lm_tokens (1)' (what is known of either)."""
    parts = []
    budget = summary.get("budget") or {}
    if budget.get("limits"):
        parts.append("budget " + ", ".join(f"{name} {budget['spent'][name]:,.6g} of {limit:,.6g}"
                                           for name, limit in budget["limits"].items()))
    if summary.get("stopped_by"):
        parts.append("stopped by: " + ", ".join(f"{cause} ({n})" for cause, n in summary["stopped_by"].items()))
    return "".join(f"; {part}" for part in parts)


def failed_trials(output_dir: str) -> list[tuple[str, str]]:
    """(trial_id, the one line saying why) of each failed trial, from the results' trials table."""
    return connect([output_dir]).sql("SELECT trial_id, error FROM trials WHERE status = 'failed' ORDER BY trial_id").fetchall()


def check_sweep(cfg: DictConfig) -> None:
    """What main would refuse, and an output_dir and corpus it cannot use: checked before Hydra creates the run
    directory (gepa_lab.config.load.refuse_bad_command), so a refused sweep writes nothing."""
    from gepa_lab.sweep.driver import check

    sweep_cfg = load_config(cfg, SweepConfig)
    check(sweep_cfg, compose_variants(sweep_cfg, sys.argv[1:]))  # the overrides refuse_bad_command composed cfg with
    check_before_start(sweep_cfg)


@hydra.main(config_path=str(CONF_DIR), config_name="sweep", version_base=None)
@one_line_errors
def main(cfg: DictConfig) -> None:
    from gepa_lab.sweep.driver import run_sweep  # Ray, Tune, MLflow: not imported for --cfg/--help

    quiet_libraries()
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(TrialFailuresInOneLine())
    sweep_cfg = load_config(cfg, SweepConfig)
    # each config-group combination composed as this command line composed cfg, before Ray starts
    variants = compose_variants(sweep_cfg, HydraConfig.get().overrides.task)
    summary = run_sweep(sweep_cfg, variants)
    console = Console(width=None if sys.stdout.isatty() else 200)  # logs: no 80-column wrapping of the leaderboard
    console.print(leaderboard_table(connect([summary["output_dir"]])))
    trials = summary["trials"]
    console.print(f"trials: {trials['total']}: " + ", ".join(f"{n} {status}" for status, n in trials.items() if status != "total" and n)
                  + budget_line(summary))
    for trial_id, error in failed_trials(summary["output_dir"]):
        console.print(escape(f"trial {trial_id} failed: {error}"), style="red", soft_wrap=True)
    several = len(summary["winners"]) > 1
    for task, winner in summary["winners"].items():
        console.print(escape(
            f"{f'{task}: ' if several else ''}best trial {winner['best_trial_id']}: val {winner['seed_val_score']:.3f} -> "
            f"{winner['best_val_score']:.3f}, test {with_interval(winner['seed_test_score'], winner.get('seed_test_ci95'))}"
            f" -> {with_interval(winner['best_test_score'], winner.get('best_test_ci95'))}"
        ))
        console.print(escape(confirmation_line(winner)))
    if cache := summary.get("lm_cache"):
        console.print(f"rollout cache: {cache.get('requests_saved', 0)} LM requests saved ({cache.get('entries', 0)} answers stored)")
    console.print(utilization_line(summary))
    out = summary["output_dir"]
    wandb, uri = sweep_cfg.tracking.wandb, summary.get("tracking_uri")
    lines = [
        f"  summary      {out}/summary.json",
        f"  results      {out}/results/  (python -m gepa_lab.results {out})",
        f"  trials       {out}/trials/<trial_id>/  (program.json, summary.json, gepa/)",
    ]
    if wandb.enabled and wandb.mode == "offline":
        lines.append(f"  W&B offline  {out}/wandb/  (wandb sync {out}/wandb/offline-run-*)")
    elif wandb.enabled and wandb.mode == "online":
        lines.append(f"  W&B          project {wandb.project}, group {summary['sweep_id']}")
    if uri:
        lines.append(f"  MLflow       {uri}  (mlflow ui --backend-store-uri {uri})")
        for task, winner in summary["winners"].items():
            model = winner.get("registered_model") or {}
            lines.append(f"  winner       {model.get('model_uri', 'not registered')}" + (f"  ({task})" if several else ""))
    console.print("\n[bold]where everything went[/]\n" + "\n".join(lines))
    sys.exit(exit_status(trials))


if __name__ == "__main__":
    refuse_bad_command("sweep", check_sweep)
    main()
