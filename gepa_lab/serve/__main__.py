"""python -m gepa_lab.serve check|predict ... (see gepa_lab/serve/__init__.py), and with key=value arguments
python -m gepa_lab.serve http model=models:/NAME@champion ... (gepa_lab/serve/http.py) and
python -m gepa_lab.serve batch model=... input=FILE output=FILE ... (gepa_lab/serve/batch.py).

check prints one human line on stderr and, on stdout, a JSON object as its last line:
{"ok": ..., "score": ..., "n": ..., "errors": [...], ...}. Exit status: 0 passed, 1 the check failed
(too many examples raised), 2 the model could not be loaded or bound, or the endpoint does not answer.
The LM key, if any, comes from the environment variable named by the model's api_key_env
(or --api-key-env): never pass a key on the command line.

`python -m gepa_lab.serve --args-from-stdin` imports what a check needs, then reads its arguments as one JSON
list from stdin (a sweep starts it early: gepa_lab.tracking.registry.LoadBackProcess); no line, no check.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gepa_lab.serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("check", "load-back check: score the first N test examples"), ("predict", "predict one input")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--model-uri", required=True, help="models:/NAME@champion or models:/NAME/VERSION")
        s.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (sqlite:///.../registry.db or http://host:port); "
                       "default: MLFLOW_TRACKING_URI, else the project registry outputs/registry.db")
        s.add_argument("--api-base", default=None, help="live OpenAI-compatible endpoint; default: the one recorded with the model")
        s.add_argument("--api-key-env", default=None, help="env var holding the LM key; default: the recorded api_key_env")
    check = sub.choices["check"]
    check.add_argument("--n", type=int, default=5, help="test examples to score (the first N of the test split)")
    check.add_argument("--max-error-rate", type=float, default=0.0, help="share of examples allowed to raise (default 0)")
    sub.choices["predict"].add_argument("--input", required=True, help='JSON object of input fields, e.g. \'{"query": "..."}\'')
    return p


KEY_VALUE_COMMANDS = ("http", "batch")


def key_value_command(command: str, pairs: list[str]) -> int:
    """http / batch: key=value arguments validated against the command's settings; any error is one line."""
    from pydantic import ValidationError

    from gepa_lab.serve.model import ServeError
    from gepa_lab.tracking.registry import default_registry_uri

    if command == "http":
        from gepa_lab.serve.http import HttpSettings as settings_model, serve_http as run
    else:
        from gepa_lab.serve.batch import BatchSettings as settings_model, score_file as run
    bad = [p for p in pairs if "=" not in p]
    if bad:
        print(f"error: arguments are key=value, not {bad[0]!r} (keys: {', '.join(settings_model.model_fields)})", file=sys.stderr)
        return 2
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's INFO lines on loading a model are noise here
    values = dict(p.split("=", 1) for p in pairs)
    values.setdefault("tracking_uri", default_registry_uri())
    try:
        settings = settings_model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        print(f"error: {'.'.join(map(str, err['loc'])) or command}: {err['msg']}", file=sys.stderr)
        return 2
    try:
        return run(settings)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _import_what_a_check_needs() -> None:
    for module in ("mlflow.dspy.load", "mlflow.store.tracking.sqlalchemy_store", "gepa_lab.corpus",
                   "gepa_lab.lm.endpoint", "gepa_lab.serve.model", "gepa_lab.tasks.task"):
        importlib.import_module(module)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--args-from-stdin"]:
        _import_what_a_check_needs()
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        argv = json.loads(line)
    if argv and argv[0] in KEY_VALUE_COMMANDS:
        return key_value_command(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    from gepa_lab.serve.model import ServeError, check, load_model

    try:
        if args.command == "check":
            result = check(args.model_uri, args.tracking_uri, args.n, args.api_base, args.api_key_env, args.max_error_rate)
            verdict = "passed" if result["ok"] else "FAILED"
            print(
                f"load-back check {verdict}: {args.model_uri} scored {result['score']:.4f} on {result['n']} test examples "
                f"against {result['lm']['model']} at {result['lm']['api_base']} ({len(result['errors'])} errors)",
                file=sys.stderr,
            )
            for err in result["errors"][:5]:
                print(f"  error: {err}", file=sys.stderr)
            print(json.dumps(result))
            return 0 if result["ok"] else 1
        served = load_model(args.model_uri, args.tracking_uri)
        served.bind(api_base=args.api_base, api_key_env=args.api_key_env)
        pred = served.predict(**json.loads(args.input))
        print(json.dumps(dict(pred.items()), default=str))
        return 0
    except ServeError as exc:
        print(f"load-back check FAILED: {exc}" if args.command == "check" else f"error: {exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "model_uri": args.model_uri, "error": str(exc)}))
        return 2


if __name__ == "__main__":
    import dspy

    # a fresh process talks to the live LM only: no answers from dspy's cache (its key ignores api_base)
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    sys.exit(main())
