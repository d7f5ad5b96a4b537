"""Errors a user can fix: entry points print them as one line and exit 2, without a traceback."""


class GepaLabError(Exception):
    pass


class ConfigError(GepaLabError):
    pass
