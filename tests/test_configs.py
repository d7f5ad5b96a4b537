"""Every shipped config composes and validates (run, each task, each LM, each sweep definition),
and `--cfg job` prints the composed config, as lightning-hydra-template does for its experiments."""

import re

import pytest

from gepa_lab.compose import compose
from gepa_lab.config.load import to_plain, validate
from gepa_lab.config.schema import RunConfig
from gepa_lab.paths import CONF_DIR, SWEEPS_DIR
from gepa_lab.sweep.config import SweepConfig
from gepa_lab.errors import GepaLabError
from gepa_lab.sweep.driver import check, planned_trials, preflight
from gepa_lab.sweep.groups import compose_variants
from tests.conftest import run_cli

TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
LMS = sorted(p.stem for p in (CONF_DIR / "lm").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("task", TASKS)
def test_each_task_composes_and_validates(task):
    cfg = validate(RunConfig, to_plain(compose("run", [f"task={task}", "output_dir=/tmp/x"])))
    assert cfg.task.program and cfg.corpus.name


@pytest.mark.parametrize("lm", LMS)
def test_each_lm_composes_for_both_roles(lm):
    overrides = [f"lm={lm}", f"lm@reflection_lm={lm}", "output_dir=/tmp/x"]
    for role in ("lm", "reflection_lm"):  # the user names the served model, and the URL of external endpoints
        overrides.append(f"{role}.model=my-model")
        if lm in ("openai_compatible", "vllm"):
            overrides.append(f"{role}.api_base=http://127.0.0.1:1/v1")
    cfg = validate(RunConfig, to_plain(compose("run", overrides)))
    assert cfg.lm.kind == cfg.reflection_lm.kind


@pytest.mark.parametrize("sweep", SWEEPS)
def test_each_sweep_definition_validates_before_ray(sweep):
    overrides = [f"sweep={sweep}", "output_dir=/tmp/x"]
    cfg = validate(SweepConfig, to_plain(compose("sweep", overrides)))
    variants = compose_variants(cfg, overrides)  # each config-group combination (sweep.groups), as the CLI composes them
    assert planned_trials(cfg, check(cfg, variants), variants) >= 2  # it searches or compares something
    assert cfg.sweep.name == sweep


def test_demo_is_at_least_four_trials_two_at_a_time():
    cfg = validate(SweepConfig, to_plain(compose("sweep", ["sweep=demo", "output_dir=/tmp/x"])))
    assert planned_trials(cfg, check(cfg)) >= 4 and cfg.sweep.max_concurrent == 2
    assert cfg.lm.kind == "sim" and cfg.task.name == "banking77"


def test_cfg_job_prints_the_composed_config_with_overrides():
    result = run_cli("gepa_lab.sweep", "sweep=demo", "sweep.max_concurrent=4", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "max_concurrent: 4" in result.stdout and "reflection_minibatch_size" in result.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("sweep.search=optuna", "Optuna TPE takes no grid"),
        ("+sweep.space.optimizer.nope={choice:[1,2]}", "no such config key"),
        ("+sweep.space.optimizer.failure_score={uniform:[3,1]}", "low < high"),
        ("sweep.space.optimizer.reflection_minibatch_size={grid:[0,3]}", "reflection_minibatch_size"),
        ("sweep.max_concurrent=0", "sweep.max_concurrent"),
        ("lm.api_base=http://127.0.0.1:9/v1", "does not answer"),  # an external endpoint that is down
    ],
)
def test_bad_sweep_fails_preflight(override, message):
    """What run_sweep does before anything else: each problem is a GepaLabError, which the CLI prints as one line."""
    with pytest.raises(GepaLabError, match=re.escape(message)):
        preflight(validate(SweepConfig, to_plain(compose("sweep", ["sweep=demo", "output_dir=/tmp/x", override]))))


def test_bad_sweep_is_one_line_and_exit_2_before_ray_starts(tmp_path):
    result = run_cli("gepa_lab.sweep", "sweep=demo", f"output_dir={tmp_path / 'bad'}", "sweep.search=optuna")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Optuna TPE takes no grid" in lines[0], result.stderr
    assert not (tmp_path / "bad" / "tune").exists()
