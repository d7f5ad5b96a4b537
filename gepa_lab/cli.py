"""Shared by the entry points: user errors as one line + exit code 2, quiet libraries, and command lines
generated from a pydantic model (the server programs gepa_lab starts: the simulator, the router)."""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError

from gepa_lab.errors import GepaLabError
from gepa_lab.strict import StrictModel

M = TypeVar("M", bound=BaseModel)


def one_line_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GepaLabError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: stopped; rerun with the same output_dir to resume", file=sys.stderr)
            sys.exit(130)

    return wrapper


def quiet_libraries() -> None:
    """Our own progress lines replace dspy's and GEPA's per-iteration INFO logs and progress bars."""
    logging.getLogger("dspy").setLevel(logging.WARNING)
    for noisy in ("httpx", "LiteLLM", "litellm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------------------------------
# Command lines generated from a pydantic model: the model is the one definition of a program's options (flag,
# help text, default, validation); the parent process hands a child the validated model as `model_argv(options)`.


class LoggingOptions(StrictModel):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("WARNING", description="log messages from this level up")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_model_options(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One --flag per field of `model` (required ones first): its help is the field's description, its default
    the model's."""
    for name, field in sorted(model.model_fields.items(), key=lambda item: not item[1].is_required()):
        help_text = (field.description or "").replace("%", "%%")
        if not field.is_required():
            help_text += f" (default: {field.get_default(call_default_factory=True)})"
        common = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if field.annotation is bool:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **common)
        elif get_origin(field.annotation) is list:
            parser.add_argument(_flag(name), nargs="+", **common)
        else:
            choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
            parser.add_argument(_flag(name), required=field.is_required(), choices=choices, **common)


def parse_model(parser: argparse.ArgumentParser, model: type[M], argv: list[str] | None = None) -> M:
    """argv -> a validated `model` (pydantic converts the strings); bad input: one line naming the flag, exit 2."""
    try:
        return model.model_validate(vars(parser.parse_args(argv)))
    except ValidationError as e:
        first = e.errors()[0]
        where = f"{_flag(str(first['loc'][0]))}: " if first["loc"] else ""
        parser.exit(2, f"{parser.prog}: error: {where}{first['msg'].removeprefix('Value error, ')}\n")


def model_argv(options: BaseModel) -> list[str]:
    """The command line `parse_model` turns back into `options`: a flag for each option not at its default."""
    argv: list[str] = []
    for name, value in options.model_dump(exclude_defaults=True).items():
        if isinstance(value, bool):
            argv.append(_flag(name) if value else f"--no-{_flag(name)[2:]}")
        elif isinstance(value, list):
            argv += [_flag(name), *map(str, value)]
        else:
            argv += [_flag(name), str(value)]
    return argv
