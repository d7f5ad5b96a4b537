"""Shared by the entry points: user errors as one line + exit code 2, Ctrl-C and stop signals as a clean stop
(exit 128 + the signal's number), quiet libraries, and command lines generated from a pydantic model (the server
programs gepa_lab starts: the simulator, the router)."""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import signal
import sys
import threading
from typing import Any, Callable, Iterator, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError

from gepa_lab.errors import GepaLabError
from gepa_lab.strict import StrictModel

M = TypeVar("M", bound=BaseModel)


# What `timeout`, Kubernetes, Slurm and `ray job stop` (SIGTERM) or a closed terminal (SIGHUP) send: stopped like Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_honoured = False  # an entry point's one_line_errors installed the stop-signal handlers in this process
_received: int | None = None  # the stop signal that interrupted this process; None: Ctrl-C (SIGINT)
_deferring = False  # a compile runs in the main thread (stops_deferred): a stop waits for its next safe point
_stop_requested = threading.Event()  # a deferred stop arrived


def _stop_like_ctrl_c(signum: int, frame) -> None:
    """A stop signal does what Ctrl-C does: the SIGINT handler in force runs (dspy's parallel evaluation's first
    cancels the work it has queued), and KeyboardInterrupt rises in the main thread, so every `finally` and context
    manager stops what it started. During a compile (stops_deferred) the stop is recorded instead and taken at the
    compile's next safe point. Later stop signals are ignored: they would cut that cleanup short (SIGKILL does not wait
    for it; the servers then die with the process, gepa_lab.servers.process)."""
    global _received
    if _stop_requested.is_set():
        return  # a deferred stop is under way (also dspy's SIGINT handler calling back into this one)
    if signum != signal.SIGINT:
        _received = signum
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    handler = signal.getsignal(signal.SIGINT)
    if _deferring:
        _stop_requested.set()
        if callable(handler) and handler is not _stop_like_ctrl_c:
            handler(signal.SIGINT, frame)  # dspy's evaluation in this thread: it cancels what it queued and raises
        return
    if callable(handler):
        handler(signal.SIGINT, frame)
    raise KeyboardInterrupt  # Ctrl-C ignored here (a background job's SIGINT): the stop signal still stops


def stop_requested() -> bool:
    """A stop (Ctrl-C, SIGTERM, SIGHUP) arrived while a compile deferred it: LM calls are refused from now on, so the
    evaluation under way ends at once, and the compile stops at its next safe point (raise_if_stop_requested)."""
    return _stop_requested.is_set()


def raise_if_stop_requested(*_: Any) -> bool:
    """Take a deferred stop: KeyboardInterrupt. Also a GEPA stop callback (False: go on): GEPA checks it before each
    iteration, before it saves its state, so a state scored against refused LM calls is never saved."""
    if _stop_requested.is_set():
        raise KeyboardInterrupt
    return False


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """Run a compile with stops deferred: a KeyboardInterrupt raised by a signal handler at any instruction can land
    while the main thread holds a lock of a thread pool's future, and the pool's shutdown then waits forever for a
    worker that needs it. Here Ctrl-C, SIGTERM and SIGHUP only record the stop (stop_requested); the code stops at
    raise_if_stop_requested, and an error the refused LM calls caused on the way there is the stop's
    KeyboardInterrupt. Nothing changes outside an entry point's main thread."""
    global _deferring
    if not _honoured or threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.getsignal(signal.SIGINT)
    if saved is not signal.SIG_IGN:  # a background job's ignored Ctrl-C stays ignored
        signal.signal(signal.SIGINT, _stop_like_ctrl_c)
    _deferring = True
    try:
        yield
    except Exception:
        if _stop_requested.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        _deferring = False
        signal.signal(signal.SIGINT, saved)
    raise_if_stop_requested()


def honour_stop_signals() -> None:
    """Install the stop-signal handlers (from the main thread only, as Python requires). Called again by whatever
    replaces them after an entry point installed them: ray.init makes SIGTERM exit at once (sys.exit), skipping
    what the sweep must stop and mark."""
    global _honoured
    if threading.current_thread() is not threading.main_thread():
        return
    _honoured = True
    if _received is None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _stop_like_ctrl_c)


def stop_signal() -> int | None:
    """The stop signal (SIGTERM, SIGHUP) that is stopping this process, if one is: a scheduler's preemption, not
    a Ctrl-C."""
    return _received


def reclaim_stop_signals() -> None:
    """Put the entry point's stop-signal handlers back (after a library replaced them); nothing outside an entry."""
    if _honoured:
        honour_stop_signals()


def one_line_errors(fn: Callable) -> Callable:
    """An entry point's main: a GepaLabError is one line and its exit_code (2: refused; 4: a run's trial failed);
    Ctrl-C (exit 130), SIGTERM (143) and SIGHUP (129) stop it cleanly, with a line that says how to resume."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        honour_stop_signals()
        try:
            return fn(*args, **kwargs)
        except GepaLabError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            signum = _received or signal.SIGINT
            print(f"interrupted ({signal.Signals(signum).name}): stopped; rerun with the same output_dir to resume",
                  file=sys.stderr)
            sys.exit(128 + signum)

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
