"""Errors a user can fix: entry points print them as one line and exit with their `exit_code` (2), without a
traceback."""


class GepaLabError(Exception):
    exit_code = 2  # refused: bad config or input


class ConfigError(GepaLabError):
    pass


class TrialFailed(GepaLabError):
    """A trial that could not finish for a reason outside its config (an LM endpoint went away): one line; a run
    exits 4 (nothing completed), a sweep marks that trial failed and goes on."""

    exit_code = 4
