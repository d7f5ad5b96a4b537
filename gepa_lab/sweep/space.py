"""Search spaces: a nested mapping that mirrors the run config, each leaf one distribution.

    space:
      optimizer:
        seed: {grid: [0, 1]}
        reflection_minibatch_size: {choice: [3, 5]}
        max_metric_calls: {randint: [400, 800]}
      lm:
        temperature: {uniform: [0.0, 0.7]}

Leaves become Ray Tune domains under dotted keys ("optimizer.seed"); a trial's sampled values are
written back into its config at those keys. W&B sweep export reads the same leaves.

A tied axis (`sweep.tied`) sets several keys together: each option is a label naming the values it sets,

    tied:
      endpoint:
        a: {lm.model: A, lm.api_base: URL_A}
        b: {lm.model: B, lm.api_base: URL_B}

so a grid over it gives the pairs (A, URL_A) and (B, URL_B), not their cross-product. Its Tune parameter is
"tied.endpoint" (the label); expand() turns a trial's labels into the keys they set."""
from __future__ import annotations

from typing import Any

from gepa_lab.compose import flatten
from gepa_lab.errors import ConfigError

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
TIED = "tied."  # prefix of a tied axis's Tune parameter: "tied.endpoint"


def _is_leaf(node: Any) -> bool:
    return isinstance(node, dict) and len(node) == 1 and next(iter(node)) in KINDS


def leaves(space: dict, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """{"optimizer": {"seed": {"grid": [0, 1]}}} -> {"optimizer.seed": ("grid", [0, 1])}.

    Not compose.flatten: a mapping of one distribution kind is a leaf here, and anything else that is not a mapping
    is refused."""
    found: dict[str, tuple[str, Any]] = {}
    for key, node in space.items():
        path = f"{prefix}{key}"
        if _is_leaf(node):
            kind, arg = next(iter(node.items()))
            found[path] = (kind, arg)
        elif isinstance(node, dict) and node:
            found.update(leaves(node, path + "."))
        else:
            raise ConfigError(f"sweep.space.{path}: expected one of {{{', '.join(KINDS)}}}: VALUES, got {node!r}")
    return found


def check(leaves: dict[str, tuple[str, Any]], search: str, base: dict) -> None:
    for path, (kind, arg) in leaves.items():
        where = f"sweep.space.{path}"
        if not _has_path(base, path):
            raise ConfigError(f"{where}: no such config key")
        if kind in ("grid", "choice"):
            if not isinstance(arg, list) or not arg:
                raise ConfigError(f"{where}: {kind} needs a non-empty list, got {arg!r}")
        elif not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, (int, float)) for x in arg)):
            raise ConfigError(f"{where}: {kind} needs [low, high], got {arg!r}")
        elif arg[0] >= arg[1] or (kind == "loguniform" and arg[0] <= 0):
            raise ConfigError(f"{where}: {kind} needs 0 < low < high (loguniform) or low < high, got {arg!r}")
        if kind == "grid" and search == "optuna":
            raise ConfigError(f"{where}: Optuna TPE takes no grid parameters; use choice instead")


def probes(kind: str, arg: list) -> list:
    """The values a trial config is validated with for one leaf before Ray starts: every option of a grid or choice;
    a range's bounds, and for uniform and loguniform a fraction inside it (what they sample), so that a key taking
    integers or booleans refuses the range here, not in each trial."""
    if kind in ("grid", "choice"):
        return list(arg)
    low, high = arg
    return [low, high] if kind == "randint" else [low, low + (high - low) * 0.37, high]


def _has_path(data: dict, path: str) -> bool:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def tied_axes(tied: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """sweep.tied -> {axis: {label: {dotted key: value}}} (an option's keys may be dotted or nested), checked: options
    are labels, each a non-empty mapping, and every option of an axis sets the same keys."""
    axes: dict[str, dict[str, dict[str, Any]]] = {}
    for name, options in tied.items():
        where = f"sweep.tied.{name}"
        if not isinstance(options, dict) or not options:
            raise ConfigError(f"{where}: expected {{LABEL: {{key: value, ...}}, ...}}, got {options!r}")
        axes[name] = {}
        for option, values in options.items():
            if not isinstance(values, dict) or not values:
                raise ConfigError(f"{where}.{option}: expected a mapping of the keys it sets, got {values!r}")
            axes[name][str(option)] = flatten(values)
        keys = [sorted(v) for v in axes[name].values()]
        if any(k != keys[0] for k in keys):
            differ = {label: sorted(v) for label, v in axes[name].items()}
            raise ConfigError(f"{where}: every option must set the same keys, got {differ}")
    return axes


def check_tied(axes: dict[str, dict[str, dict[str, Any]]], leaves: dict[str, tuple[str, Any]], base: dict,
               swept_groups: list[str]) -> None:
    """Each key a tied axis sets exists, and belongs to that axis alone: no space leaf, no other tied axis and no
    swept config group (its package: `lm@reflection_lm` -> reflection_lm.*) sets it too."""
    owner: dict[str, str] = {path: "sweep.space" for path in leaves}
    packages = {g.split("@", 1)[-1]: g for g in swept_groups}
    for name, options in axes.items():
        where = f"sweep.tied.{name}"
        for key in next(iter(options.values())):
            if not _has_path(base, key):
                raise ConfigError(f"{where}: {key}: no such config key")
            clash = next((o for k, o in owner.items() if k == key or _nested(k, key)), None)
            if clash is None and key.split(".")[0] in packages:
                clash = f"sweep.groups.{packages[key.split('.')[0]]}"
            if clash:
                raise ConfigError(f"{where}: {key} is also set by {clash}: a key belongs to one axis")
            owner[key] = where


def _nested(a: str, b: str) -> bool:
    """One key inside the other (lm and lm.model), so setting both would overwrite one with the other."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def expand(params: dict[str, Any], axes: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """A trial's Tune parameters -> the config keys to write: each tied label becomes the keys it sets; labels of
    other axes (the config-group combination) and plain leaves pass through as they are, minus the labels."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key.startswith(TIED):
            out.update(axes[key[len(TIED):]][value])
        elif "." in key:
            out[key] = value
    return out


def to_tune(leaves: dict[str, tuple[str, Any]], tied: dict[str, dict[str, dict[str, Any]]] | None = None,
            groups: list[str] | None = None, search: str = "grid") -> dict[str, Any]:
    """Tune's param_space: every leaf, each tied axis's labels ("tied.NAME") and the config-group combinations'
    labels (groups_axis). Tied labels are a grid under grid search, a choice under random and Optuna; the group
    combinations are a grid under grid and random search (every combination runs), a choice under Optuna, which
    takes no grid."""
    from ray import tune  # here, not at the top: validating a sweep and exporting it need no Ray (~5 s to import)

    from gepa_lab.sweep.groups import GROUPS_AXIS

    space = {path: _domain(kind, arg) for path, (kind, arg) in leaves.items()}
    for name, options in (tied or {}).items():
        space[TIED + name] = (tune.grid_search if search == "grid" else tune.choice)(list(options))
    if groups:
        space[GROUPS_AXIS] = (tune.choice if search == "optuna" else tune.grid_search)(list(groups))
    return space


def _domain(kind: str, arg: Any):
    from ray import tune

    domains = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(a[0], a[1] + 1),  # inclusive high, like W&B's int_uniform
    }
    return domains[kind](arg)


def apply(config: dict, params: dict[str, Any]) -> dict:
    """Write sampled values into a (deep-copied) plain config dict at their dotted paths."""
    import copy

    out = copy.deepcopy(config)
    for path, value in params.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return out
