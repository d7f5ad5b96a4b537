"""The one error type of the corpus layer: its str() is a single line meant for the user."""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Iterable

from gepa_lab.errors import GepaLabError
from gepa_lab.paths import PROJECT_ROOT


class CorpusError(GepaLabError):
    """Bad corpus input or config. ``str(err)`` is one line naming the file (and column) at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def display_path(path: str | os.PathLike) -> str:
    """A path as shown to users and stored in manifests: relative to the project root when inside it."""
    p = Path(path)
    try:
        return p.resolve().relative_to(PROJECT_ROOT.resolve()).as_posix()
    except ValueError:
        return p.resolve().as_posix()


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def first_line(exc: BaseException) -> str:
    """The most specific one-line description of an exception chain (HF datasets wraps the real cause)."""
    seen = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    # prefer the innermost exception that has a message
    for e in reversed(seen):
        text = str(e).strip()
        if text:
            return f"{type(e).__name__}: {text.splitlines()[0]}"
    return type(exc).__name__


def no_column(shown: str, column: str, field: str, columns: list[str]) -> CorpusError:
    """The error for a declared raw column that a file lacks."""
    cols = ", ".join(columns) or "none"
    return CorpusError(f"{shown}: no column '{column}' (wanted by {field}){did_you_mean(column, columns)}; columns: {cols}")
