"""``python -m gepa_lab.sim --port N [options]``: run the LM simulator (see ``server.py``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .server import SimConfig, run_server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gepa_lab.sim",
        description="Deterministic offline LM speaking the OpenAI chat-completions API (task + GEPA reflection).",
    )
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default="sim", help="model name served by /v1/models (default: sim)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (prefer --api-key-env)")
    p.add_argument("--api-key-env", default=None, metavar="NAME", help="read the required API key from env var NAME")
    p.add_argument("--latency-ms", type=float, default=0.0, help="fixed latency per request")
    p.add_argument("--per-token-ms", type=float, default=0.0, help="extra latency per completion token")
    p.add_argument("--max-in-flight", type=int, default=64, help="requests processed at once; the rest queue")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered with HTTP 500")
    p.add_argument("--rate-limit-rate", type=float, default=0.0, help="share answered with HTTP 429 + Retry-After")
    p.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After value of the 429 replies")
    p.add_argument("--hang-rate", type=float, default=0.0, help="share of requests that hang for --hang-s")
    p.add_argument("--hang-s", type=float, default=30.0, help="how long a hanging request hangs")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING))
    api_key = args.api_key
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env) or None
        if api_key is None:
            print(f"error: environment variable {args.api_key_env} is not set or empty", file=sys.stderr)
            return 2
    for name in ("error_rate", "rate_limit_rate", "hang_rate"):
        v = getattr(args, name)
        if not 0.0 <= v <= 1.0:
            print(f"error: --{name.replace('_', '-')} must be within [0, 1]", file=sys.stderr)
            return 2
    if args.error_rate + args.rate_limit_rate + args.hang_rate > 1.0:
        print("error: the fault rates add up to more than 1", file=sys.stderr)
        return 2
    if args.max_in_flight < 1:
        print("error: --max-in-flight must be >= 1", file=sys.stderr)
        return 2
    config = SimConfig(
        host=args.host,
        port=args.port,
        model=args.model,
        api_key=api_key,
        latency_ms=args.latency_ms,
        per_token_ms=args.per_token_ms,
        max_in_flight=args.max_in_flight,
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        retry_after_s=args.retry_after_s,
        hang_rate=args.hang_rate,
        hang_s=args.hang_s,
        seed=args.seed,
    )
    run_server(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
