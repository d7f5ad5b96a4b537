"""Hydra's composed config -> a validated RunConfig, or one clear line of error."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from gepa_lab.errors import ConfigError
from gepa_lab.tasks.imports import ImportPathError, import_object


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    data.pop("hydra", None)
    return data


def one_line(error: ValidationError, prefix: str = "") -> str:
    errors = error.errors()
    first = errors[0]
    where = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    got = f", got {first['input']!r}" if first["type"] != "missing" and not isinstance(first["input"], dict) else ""
    return f"config error at {where or 'top level'}: {first['msg']}{got}{more}"


def validate(model: type, data: dict[str, Any], prefix: str = ""):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(one_line(e, prefix)) from None


def check_task_imports(program: str, metric: str) -> None:
    from gepa_lab.tasks.task import resolve_metric  # imports dspy (~2 s): only where a task is checked

    try:
        import_object(program)
        resolve_metric(metric)
    except ImportPathError as e:
        raise ConfigError(f"config error at task: {e}") from None

