#!/usr/bin/env python
"""Benchmark the LM simulator's answer path, what it does per chat request apart from HTTP: banking77 prompts
exactly as dspy's ChatAdapter writes them, a few program candidates (instructions) times the val examples, as
GEPA's evaluations send them. Compared: the server as it runs (each system prompt parsed once, prompt tokens
counted per message, both cached) vs every request parsed and counted anew.

    python scripts/bench_sim.py [--candidates 4] [--examples 150]

Prints requests per second both ways and the ratio; the answers are checked to be identical.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy  # noqa: E402

from gepa_lab.compose import compose  # noqa: E402
from gepa_lab.corpus import ensure_prepared, read_manifest, read_split  # noqa: E402
from gepa_lab.sim.engine import respond  # noqa: E402
from gepa_lab.sim.prompts import parse_system  # noqa: E402
from gepa_lab.sim.text import count_message_tokens, prompt_token_count  # noqa: E402
from gepa_lab.run import load_run_config  # noqa: E402
from gepa_lab.tasks.task import build_program  # noqa: E402


def requests(candidates: int, examples: int) -> list[dict]:
    cfg = load_run_config(compose("run", ["task=banking77", "output_dir=/tmp/bench-sim-unused"]))
    corpus = ensure_prepared(cfg.corpus, quiet=True)
    manifest = read_manifest(corpus)
    [(_, predictor)] = build_program(cfg.task, manifest).named_predictors()
    rows = read_split(corpus, "val")[:examples]
    query = manifest["inputs"][0]
    bodies = []
    for k in range(candidates):
        signature = predictor.signature.with_instructions(f"{cfg.task.instruction}\n\nCandidate {k}: answer with one label.")
        for row in rows:
            messages = dspy.ChatAdapter().format(signature, demos=[], inputs={query: row[query]})
            bodies.append({"model": "sim", "messages": messages})
    return bodies


def answer_all(bodies: list[dict], cached: bool) -> tuple[float, list[tuple[str, int]]]:
    parse_system.cache_clear()
    count_message_tokens.cache_clear()
    out = []
    start = time.perf_counter()
    for body in bodies:
        if not cached:
            parse_system.cache_clear()
            count_message_tokens.cache_clear()
        out.append((respond(body), prompt_token_count(body["messages"])))
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--examples", type=int, default=150)
    args = ap.parse_args()
    bodies = requests(args.candidates, args.examples)
    answer_all(bodies[: args.examples], cached=True)  # warm the parts that are cached either way (label models)
    anew, answers_anew = answer_all(bodies, cached=False)
    cached, answers_cached = answer_all(bodies, cached=True)
    assert answers_anew == answers_cached, "caching changed an answer"
    n = len(bodies)
    print(f"{n} requests ({args.candidates} candidates x {args.examples} examples)")
    print(f"  parsed anew each time: {n / anew:7.0f} requests/s")
    print(f"  cached (the server):   {n / cached:7.0f} requests/s   ({anew / cached:.1f}x)")


if __name__ == "__main__":
    main()
