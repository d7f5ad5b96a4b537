"""sweep.groups and sweep.tied before Ray starts: each config-group combination composed with Hydra and validated,
one precedence rule, the checks that refuse a bad sweep in one line, and the W&B export of both axes."""
import re

import pytest

from gepa_lab.compose import compose
from gepa_lab.config.load import to_plain, validate
from gepa_lab.errors import ConfigError
from gepa_lab.sweep import space
from gepa_lab.sweep.config import SweepConfig
from gepa_lab.sweep.driver import check, lm_configs, planned_trials
from gepa_lab.sweep.groups import compose_variants
from gepa_lab.sweep.wandb_sweeps import export, split_labels
from tests.conftest import run_cli

SWEEP = ["sweep=tasks_x_sims", "output_dir=/tmp/x"]
BANKING, CSV = "task=banking77,lm@reflection_lm=sim", "task=classify,lm@reflection_lm=sim"


def composed(*extra: str):
    overrides = [*SWEEP, *extra]
    cfg = validate(SweepConfig, to_plain(compose("sweep", overrides)))
    return cfg, compose_variants(cfg, overrides)


def test_each_combination_is_composed_validated_and_labelled():
    cfg, variants = composed()
    assert list(variants) == [BANKING, CSV]
    assert [(v["task"]["name"], v["corpus"]["name"]) for v in variants.values()] == [
        ("banking77", "banking77"), ("example_csv", "example_csv")]
    leaves = check(cfg, variants)
    assert planned_trials(cfg, leaves, variants) == 4  # 2 tasks x 2 tied simulators: pairs, not 2 x 2 x 2
    sims = {(c.sim.seed, c.sim.latency_ms) for c in lm_configs(cfg, leaves, variants, roles=("lm",)).values()}
    assert sims == {(0, 0.0), (1, 5.0)}  # one simulator per tied option, for every combination


def test_precedence_group_option_then_sweep_file_then_command_line():
    # conf/optimizer/gepa.yaml (a group option) sets max_metric_calls 1000, the sweep file 400
    _, variants = composed("+sweep.groups.optimizer=[gepa]")
    assert {v["optimizer"]["max_metric_calls"] for v in variants.values()} == {400}
    _, variants = composed("+sweep.groups.optimizer=[gepa]", "optimizer.max_metric_calls=777")
    assert {v["optimizer"]["max_metric_calls"] for v in variants.values()} == {777}
    # the group option over the base config's choice (conf/sweep.yaml: task banking77) and the code defaults
    assert variants[f"{CSV},optimizer=gepa"]["task"]["instruction"] == (
        "Classify the input into exactly one of the allowed labels.")
    _, variants = composed("task.instruction=Say it.")
    assert {v["task"]["instruction"] for v in variants.values()} == {"Say it."}


@pytest.mark.parametrize("extra, message", [
    (["task=gsm8k"], "group task is swept by sweep.groups; set sweep.groups.task=[...] instead"),
    (["sweep.groups.task=[banking77,nope]"], "sweep.groups (task=nope,lm@reflection_lm=sim): "),
    (["sweep.groups.task=[banking77,banking77]"], "sweep.groups.task: an option is listed twice"),
])
def test_bad_groups_are_refused_while_composing(extra, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        composed(*extra)


@pytest.mark.parametrize("extra, message", [
    # the two tasks' corpora, both renamed: one folder would hold two different corpora
    (["corpus.name=shared"], "two different corpus configs are both named 'shared'"),
    (["sweep.search=optuna"], "a task axis (banking77, example_csv) compares tasks"),
    (["sweep.scheduler=asha"], "use search grid or random with scheduler fifo"),
    (["+sweep.tied.simulator.steady.lm.sim.error_rate=0.1"], "every option must set the same keys"),
    (["+sweep.space.lm.sim.seed={grid:[0,1]}"], "sweep.tied.simulator: lm.sim.seed is also set by sweep.space"),
    (["+sweep.tied.other={x:{lm.sim:{seed:3}},y:{lm.sim:{seed:4}}}"], "lm.sim.seed is also set by sweep.tied.simulator"),
    (["+sweep.tied.other={x:{lm.sim:{}},y:{lm.sim:{}}}"], "lm.sim is also set by sweep.tied.simulator"),
    (["+sweep.tied.refl={x:{reflection_lm.model:a},y:{reflection_lm.model:b}}"],
     "reflection_lm.model is also set by sweep.groups.lm@reflection_lm"),
    (["+sweep.tied.refl={x:{optimizer.nope:1},y:{optimizer.nope:2}}"], "optimizer.nope: no such config key"),
    (["+sweep.tied.refl={x:{optimizer.reflection_minibatch_size:0},y:{optimizer.reflection_minibatch_size:2}}"],
     "reflection_minibatch_size"),
])
def test_bad_group_and_tied_sweeps_fail_the_check(extra, message):
    cfg, variants = composed(*extra)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check(cfg, variants)


def test_groups_without_a_task_axis_go_with_optuna_as_a_choice():
    cfg, variants = composed("sweep.search=optuna", "sweep.groups.task=[classify]", "+sweep.groups.cache=[disk,off]")
    leaves = check(cfg, variants)
    tune_space = space.to_tune(leaves, space.tied_axes(cfg.sweep.tied), list(variants), cfg.sweep.search)
    assert sorted(tune_space["groups"].categories) == sorted(variants)  # Optuna takes no grid: both are choices
    assert sorted(tune_space["tied.simulator"].categories) == ["slower", "steady"]


def test_tied_labels_expand_to_the_keys_they_set():
    cfg, _ = composed()
    axes = space.tied_axes(cfg.sweep.tied)
    params = {"tied.simulator": "slower", "groups": CSV, "optimizer.seed": 1}
    assert space.expand(params, axes) == {"lm.sim.seed": 1, "lm.sim.latency_ms": 5, "optimizer.seed": 1}


def test_a_task_axis_with_optuna_is_one_line_before_ray_starts(tmp_path):
    result = run_cli("gepa_lab.sweep", "sweep=tasks_x_sims", f"output_dir={tmp_path / 'bad'}", "sweep.search=optuna")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "a task axis (banking77, example_csv) compares tasks" in lines[0], result.stderr
    assert not (tmp_path / "bad" / "tune").exists() and not (tmp_path / "bad" / "sweep_variants.json").exists()


def test_wandb_export_maps_the_tied_axis_and_the_group_combinations():
    doc, notes = export(["sweep=tasks_x_sims"])
    assert doc["parameters"] == {"tied.simulator": {"values": ["steady", "slower"]}, "groups": {"values": [BANKING, CSV]}}
    assert any("across tasks too" in note for note in notes)
    with pytest.raises(ConfigError, match=re.escape("compares tasks")):
        export(["sweep=tasks_x_sims", "sweep.search=optuna"])


def test_the_wandb_agent_composes_the_combination_it_is_handed():
    given = ["sweep=tasks_x_sims", f"groups={CSV}", "tied.simulator=slower", "optimizer.seed=1"]
    overrides, labels = split_labels(given, None)
    assert labels == {"groups": CSV, "tied.simulator": "slower"}
    cfg = validate(SweepConfig, to_plain(compose("sweep", [*overrides, "output_dir=/tmp/x"])))
    assert (cfg.task.name, cfg.optimizer.seed) == ("example_csv", 1)
    # wandb.config (where W&B's agent puts the parameters) wins over the command line
    overrides, _ = split_labels(given, {"groups": BANKING})
    assert validate(SweepConfig, to_plain(compose("sweep", [*overrides, "output_dir=/tmp/x"]))).task.name == "banking77"
