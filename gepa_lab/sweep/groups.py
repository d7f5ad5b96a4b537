"""Config-group options as a sweep axis: `sweep.groups: {task: [banking77, classify], "lm@reflection_lm": [sim]}`.

The entry point composes one full config per combination of options with Hydra's compose API, before Ray starts,
and validates each; the combination's label (`task=classify,lm=sim`: the group overrides that compose it) is the
value of the Tune axis GROUPS_AXIS, and a trial takes the config composed under its label (trainable.trial_config).

Precedence, one rule (docs/sweeps.md): the group option, then the sweep file's own settings, then the command line's
overrides. That is Hydra's own order: a group option's values land at the group's place in the defaults list, the
sweep file (the `sweep` group) comes after every other group, and `key=value` overrides come last. A command-line
override choosing a swept group (`task=gsm8k` with `groups: {task: [...]}`) is refused: set `sweep.groups.task`.

The composed configs are saved in OUTPUT_DIR/sweep_variants.json; a resumed sweep takes them from there, so it runs
exactly the set it started with."""
from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gepa_lab import atomic
from gepa_lab.compose import compose
from gepa_lab.config.load import to_plain, validate
from gepa_lab.errors import ConfigError

GROUPS_AXIS = "groups"  # the Tune parameter (and the trial's recorded param) holding the combination's label
NO_GROUPS = ""  # the one label of a sweep without groups
VARIANTS_FILE = "sweep_variants.json"


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def combinations(groups: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """{task: [a, b], lm: [x]} -> [{task: a, lm: x}, {task: b, lm: x}], in the order the options are listed."""
    for group, options in groups.items():
        if not isinstance(options, list) or not options or not all(isinstance(o, str) and o for o in options):
            raise ConfigError(f"sweep.groups.{group}: expected a non-empty list of option names, got {options!r}")
        if len(set(options)) < len(options):
            raise ConfigError(f"sweep.groups.{group}: an option is listed twice: {options}")
    names = list(groups)
    return [dict(zip(names, chosen)) for chosen in itertools.product(*(groups[n] for n in names))]


def label(choice: Mapping[str, str]) -> str:
    return ",".join(f"{group}={option}" for group, option in choice.items())


def single(cfg) -> dict[str, dict[str, Any]]:
    """The variants of a sweep without groups: its base config alone."""
    if cfg.sweep.groups:
        raise ConfigError("sweep.groups: the combinations are composed by the entry point (groups.compose_variants)")
    return {NO_GROUPS: cfg.base_run()}


def compose_variants(cfg, overrides: Sequence[str]) -> dict[str, dict[str, Any]]:
    """label -> the plain run config of each combination of sweep.groups, composed from conf/sweep.yaml with the
    command line's `overrides` plus the combination's group options, and validated. Without groups: single(cfg)."""
    from gepa_lab.sweep.config import SweepConfig

    groups = cfg.sweep.groups
    if not groups:
        return single(cfg)
    overrides = list(overrides)
    for override in overrides:
        if override_key(override) in groups:
            raise ConfigError(f"{override}: group {override_key(override)} is swept by sweep.groups; "
                              f"set sweep.groups.{override_key(override)}=[...] instead")
    variants: dict[str, dict[str, Any]] = {}
    for choice in combinations(groups):
        name = label(choice)
        try:
            composed = compose("sweep", [*overrides, *(f"{g}={o}" for g, o in choice.items())])
        except ConfigError as exc:
            raise ConfigError(f"sweep.groups ({name}): {exc}") from None
        data = to_plain(composed)
        data["output_dir"] = cfg.output_dir  # one sweep folder (the default holds the time of composing)
        try:
            variant = validate(SweepConfig, data)
        except ConfigError as exc:
            raise ConfigError(f"sweep.groups ({name}): {exc}") from None
        variants[name] = variant.base_run()
    return variants


def tasks(variants: Mapping[str, dict[str, Any]]) -> list[str]:
    """The task names the variants run, in order of first appearance."""
    return list(dict.fromkeys(v["task"]["name"] for v in variants.values()))


def check_corpora(variants: Mapping[str, dict[str, Any]]) -> None:
    """A corpus is prepared into a folder named after it: two different corpus configs under one name would overwrite
    each other's data."""
    seen: dict[str, tuple[str, str]] = {}
    for name, variant in variants.items():
        corpus = variant["corpus"]
        text = json.dumps(corpus, sort_keys=True)
        if corpus["name"] in seen and seen[corpus["name"]][1] != text:
            raise ConfigError(f"sweep.groups: two different corpus configs are both named '{corpus['name']}' "
                              f"({seen[corpus['name']][0] or 'the base'} and {name}): give one its own corpus.name")
        seen.setdefault(corpus["name"], (name, text))


def check_task_axis(spec, variants: Mapping[str, dict[str, Any]]) -> None:
    """Several tasks in one sweep are a comparison, not a search: Optuna and ASHA would compare their scores."""
    found = tasks(variants)
    if len(found) > 1 and (spec.search == "optuna" or spec.scheduler != "fifo"):
        raise ConfigError(f"sweep.groups: a task axis ({', '.join(found)}) compares tasks, it does not search them: "
                          f"use search grid or random with scheduler fifo (got search={spec.search}, "
                          f"scheduler={spec.scheduler}: they would rank scores across tasks)")


def saved(out: Path) -> dict[str, dict[str, Any]] | None:
    """The variants a run of this sweep saved in out/VARIANTS_FILE (a resume runs the set it started with)."""
    path = out / VARIANTS_FILE
    return json.loads(path.read_text())["variants"] if path.is_file() else None


def save(out: Path, variants: dict[str, dict[str, Any]]) -> None:
    atomic.write_json(out / VARIANTS_FILE, {"variants": variants})
