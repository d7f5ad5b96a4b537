"""Search spaces: a nested mapping that mirrors the run config, each leaf one distribution.

    space:
      optimizer:
        seed: {grid: [0, 1]}
        reflection_minibatch_size: {choice: [3, 5]}
        max_metric_calls: {randint: [400, 800]}
      lm:
        temperature: {uniform: [0.0, 0.7]}

Leaves become Ray Tune domains under dotted keys ("optimizer.seed"); a trial's sampled values are
written back into its config at those keys. W&B sweep export reads the same leaves."""
from __future__ import annotations

from typing import Any

from gepa_lab.errors import ConfigError

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


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


def _has_path(data: dict, path: str) -> bool:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def to_tune(leaves: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    from ray import tune  # here, not at the top: validating a sweep and exporting it need no Ray (~5 s to import)

    domains = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(a[0], a[1] + 1),  # inclusive high, like W&B's int_uniform
    }
    return {path: domains[kind](arg) for path, (kind, arg) in leaves.items()}


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
