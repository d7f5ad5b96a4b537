"""Resolve `package.module:attribute` import paths from config (user programs and metrics)."""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from gepa_lab.errors import GepaLabError


class ImportPathError(GepaLabError, ValueError):
    """A task.program / task.metric that cannot be used; one line, as entry points print it."""


def import_object(path: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ImportPathError(f"'{path}' is not an import path of the form package.module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportPathError(f"cannot import module '{module_name}' (from '{path}'): {e}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportPathError(f"module '{module_name}' has no attribute '{attr}' (from '{path}')")
        obj = getattr(obj, part)
    return obj


def _parameters(factory: Callable) -> dict[str, inspect.Parameter]:
    try:  # a class's own __init__: dspy.Module's metaclass hides it behind __call__(*args, **kwargs)
        return dict(inspect.signature(factory.__init__ if inspect.isclass(factory) else factory).parameters)
    except (TypeError, ValueError):
        return {}


def named_parameters(factory: Callable) -> set[str]:
    """The keyword parameters `factory` names (not *args or **kwargs)."""
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {name for name, p in _parameters(factory).items() if p.kind not in variadic}


def call_with_known_kwargs(factory: Callable, available: dict[str, Any], extra: dict[str, Any]) -> Any:
    """Call `factory` with `extra` plus whichever of `available` its signature names.

    Built-in factories take the task facts they need (labels, inputs, ...); a user's class with
    no parameters gets none of them."""
    params = _parameters(factory)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in available.items() if takes_any or k in params}
    kwargs.update(extra)
    return factory(**kwargs)
