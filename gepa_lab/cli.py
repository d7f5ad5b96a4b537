"""Shared by the Hydra entry points: resolvers, and user errors as one line + exit code 2."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable

from gepa_lab.errors import GepaLabError


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
