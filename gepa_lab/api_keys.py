"""API keys come from the environment only: a config names the variable that holds one (api_key_env), never the key."""
from __future__ import annotations

import os

from gepa_lab.errors import GepaLabError


class MissingKeyError(GepaLabError, ValueError):  # a user error (one line at the CLI); a ValueError, as it always was
    pass


def key_from_env(name: str | None, *, needed_by: str | None = None) -> str | None:
    """The value of the environment variable `name`; None when no name is given, or when it is unset or empty and
    nothing needs it. With `needed_by` (who needs the key), an unset variable is a MissingKeyError naming it."""
    if not name:
        return None
    key = os.environ.get(name) or None
    if key is None and needed_by:
        raise MissingKeyError(f"{needed_by} needs a key in environment variable {name} (api_key_env), which is not set or empty")
    return key
