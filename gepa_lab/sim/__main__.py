"""``python -m gepa_lab.sim --port N [options]``: run the LM simulator (see ``server.py``); the options are
``SimConfig``'s fields (``config.py``)."""

from __future__ import annotations

import argparse
import logging
import sys

from gepa_lab.api_keys import MissingKeyError, key_from_env
from gepa_lab.cli import add_model_options, parse_model

from .config import SimConfig
from .server import run_server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gepa_lab.sim",
        description="Deterministic offline LM speaking the OpenAI chat-completions API (task + GEPA reflection).",
    )
    add_model_options(parser, SimConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    config = parse_model(build_parser(), SimConfig, argv)
    logging.basicConfig(level=config.log_level)
    try:
        api_key = key_from_env(config.api_key_env, needed_by="the simulator")
    except MissingKeyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_server(config, api_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
