"""Hydra's composed config -> a validated RunConfig, or one clear line of error; and the check every entry point
runs before Hydra creates its run directory, so that a refused command writes nothing."""
from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from gepa_lab.cli import one_line_errors
from gepa_lab.compose import compose
from gepa_lab.errors import ConfigError
from gepa_lab.tasks.imports import ImportPathError, import_object

M = TypeVar("M", bound=BaseModel)


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve, a missing value (???)
        where = f" at {e.full_key}" if getattr(e, "full_key", None) else ""
        raise ConfigError(f"config error{where}: {(str(e).strip() or type(e).__name__).splitlines()[0]}") from None
    data.pop("hydra", None)
    return data


def one_line(error: ValidationError, prefix: str = "") -> str:
    errors = error.errors()
    first = errors[0]
    where = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    got = f", got {shown(first['input'])}" if first["type"] != "missing" and not isinstance(first["input"], dict) else ""
    return " ".join(f"config error at {where or 'top level'}: {first['msg']}{got}{more}".split())


def shown(value: Any, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate(model: type[M], data: dict[str, Any], prefix: str = "", *, strict: bool = False) -> M:
    """strict: types as given, no conversion (for values YAML and Hydra have already typed: `true` is no integer)."""
    try:
        return model.model_validate(data, strict=strict or None)
    except ValidationError as e:
        raise ConfigError(one_line(e, prefix)) from None


def load_config(cfg: DictConfig, model: type[M]) -> M:
    """A composed config as `model`, strictly: Hydra has typed every value, so a bool given for a number (a budget
    of `true` metric calls) is refused, not read as 1."""
    return validate(model, to_plain(cfg), strict=True)


def check_task_imports(program: str, metric: str) -> None:
    from gepa_lab.tasks.task import resolve_metric  # imports dspy (~2 s): only where a task is checked

    try:
        import_object(program)
        resolve_metric(metric)
    except ImportPathError as e:
        raise ConfigError(f"config error at task: {e}") from None


def check_output_dir(output_dir: str) -> None:
    """output_dir must be a folder this process can create and write in; checked by writing (and removing) a probe
    in its nearest existing ancestor, which also holds for root, whom permission bits do not stop."""
    if not output_dir.strip():
        raise ConfigError("config error at output_dir: empty; give a folder")
    path = Path(output_dir).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        what = "is not a folder" if existing == path else f"cannot be created: {existing} is not a folder"
        raise ConfigError(f"config error at output_dir: {output_dir} {what}")
    try:
        with tempfile.TemporaryDirectory(prefix=".gepa_lab-write-probe-", dir=existing):
            pass
    except OSError as e:
        raise ConfigError(f"config error at output_dir: {output_dir} cannot be written ({existing}: "
                          f"{e.strerror or type(e).__name__})") from None


def check_before_start(config: Any) -> None:
    """What a run or sweep needs besides a valid config, checked before anything starts: an output_dir it can write,
    and its corpus, prepared (a bad raw file is refused here; a good one is prepared once, as the run would)."""
    from gepa_lab.corpus import ensure_prepared

    check_output_dir(config.output_dir)
    ensure_prepared(config.corpus)


def refuse_bad_command(config_name: str, check: Callable[[DictConfig], Any]) -> None:
    """Before hydra.main runs: compose conf/<config_name>.yaml with the command's overrides as Hydra will, and
    `check` it. Hydra creates the run directory (output_dir) and writes .hydra/ there before the entry's main runs;
    checked first, a refused command (a bad override, malformed YAML, an invalid value, a bad corpus file, an
    output_dir it cannot write) is one line and exit 2, and writes nothing. A command with Hydra flags (--cfg,
    --help, -m, --config-dir, ...) is left to Hydra: those run nothing, or are Hydra's own business."""
    args = sys.argv[1:]
    if any(arg.startswith("-") for arg in args):
        return
    one_line_errors(lambda: check(compose(config_name, args)))()
