#!/usr/bin/env python
"""Does dspy.GEPA improve a classifier when both the task LM and the reflection LM are the simulator?

Bounded dev experiment. For each seed: a stratified seeded split of a ``text,category`` CSV, the task
``dspy.Predict(query: str -> intent: Literal[labels])`` with the seed instruction, a metric that emits
the feedback wording the simulator learns from, dspy.GEPA with ``max_metric_calls``; then seed and
winner are scored on val and test. Prints a table and (``--out``) writes JSON.

    python scripts/sim_learning_experiment.py corpora/raw/banking77/train.csv --seeds 0 1 2
    python scripts/sim_learning_experiment.py --generate /tmp/gen.csv --seeds 0 1 2 --train 120 --val 60 --test 200

By default the LMs are a real simulator server (HTTP, ``start_simulator``); ``--inproc`` calls the
simulator's engine in-process instead (same replies, faster, for tuning only).
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DSPY_CACHEDIR", tempfile.mkdtemp(prefix="sim_exp_dspy_cache_"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import logging  # noqa: E402

import dspy  # noqa: E402

for _name in ("dspy", "gepa", "LiteLLM", "litellm", "httpx"):
    logging.getLogger(_name).setLevel(logging.ERROR)

SEED_INSTRUCTION = "Classify the intent of an online-banking customer query."


def feedback_text(pred: str | None, gold: str) -> str:
    if pred == gold:
        return f'Correct. The correct answer is "{gold}".'
    return f'Incorrect: you answered "{pred}". The correct answer is "{gold}".'


def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    answer = getattr(pred, "intent", None)
    score = 1.0 if answer == gold.intent else 0.0
    return dspy.Prediction(score=score, feedback=feedback_text(answer, gold.intent))


def load_rows(path: str) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def stratified_split(rows, seed: int, n_train: int, n_val: int, n_test: int):
    """Round-robin over labels (label order and rows within a label shuffled by seed)."""
    rng = random.Random(seed)
    by_label: dict[str, list] = collections.defaultdict(list)
    for r in rows:
        by_label[r[1]].append(r)
    labels = sorted(by_label)
    rng.shuffle(labels)
    for lab in labels:
        rng.shuffle(by_label[lab])
    need = n_train + n_val + n_test
    order: list = []
    depth = 0
    while len(order) < need and any(depth < len(v) for v in by_label.values()):
        for lab in labels:
            if depth < len(by_label[lab]):
                order.append(by_label[lab][depth])
        depth += 1
    train, val, test = [], [], []
    # deal the interleaved rows so each split sees every label about equally often
    for i, r in enumerate(order[:need]):
        slot = i % need
        (train if slot < n_train else val if slot < n_train + n_val else test).append(r)
    # the interleaving above gives train the first rounds; reshuffle inside each split
    for part in (train, val, test):
        rng.shuffle(part)
    return train, val, test


def generate_corpus(path: str, seed: int = 1234, n_labels: int = 10, per_label: int = 60) -> None:
    """A small synthetic corpus: 2-word labels, queries from per-label cue words + shared filler."""
    rng = random.Random(seed)
    objects = ["order", "parcel", "invoice", "coupon", "subscription", "voucher", "ticket", "account", "device", "plan"]
    actions = ["refund", "tracking", "cancel", "upgrade", "reset", "delay", "discount", "renewal", "damage", "transfer"]
    pool = ("zorbit kelvane trusk mivolt panterra quillon rasp ferrit glimmon hoskar jundle lorvic marnet "
            "nubrin oskel plevin quorra rindle sabrel tavor umbrix vindle wostra yarrow zentil brisk caddle "
            "dorvin eskar fennel gorvo hexley ilvar jostle kirren").split()
    filler = "hello please help me with my problem today thanks i need some info about this issue quickly".split()
    labels = []
    while len(labels) < n_labels:
        lab = f"{rng.choice(objects)}_{rng.choice(actions)}"
        if lab not in labels:
            labels.append(lab)
    cues = {}
    for i, lab in enumerate(labels):
        own = rng.sample(pool, 4)
        cues[lab] = own
    # overlap: some cue words shared with the next label
    for i, lab in enumerate(labels):
        cues[lab].append(cues[labels[(i + 1) % n_labels]][0])
    rows = []
    for lab in labels:
        name_words = lab.split("_")
        for _ in range(per_label):
            words = rng.sample(cues[lab], rng.randint(1, 2))
            if rng.random() < 0.35:
                words.append(rng.choice(name_words))
            if rng.random() < 0.3:  # a word that belongs to another label's name
                words.append(rng.choice(rng.choice(labels).split("_")))
            words += rng.sample(filler, rng.randint(2, 5))
            rng.shuffle(words)
            rows.append((" ".join(words).capitalize() + "?", lab))
    rng.shuffle(rows)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        w.writerows(rows)


class InprocSimLM(dspy.BaseLM):
    """The simulator's engine called in-process (tuning aid; the HTTP server gives identical replies)."""

    def __init__(self):
        super().__init__(model="sim-inproc", cache=False)

    def forward(self, prompt=None, messages=None, **kwargs):
        from gepa_lab.sim.engine import respond

        content = respond({"model": "sim", "messages": messages or [{"role": "user", "content": prompt or ""}]})
        return {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "model": "sim",
        }


def make_program(labels: list[str]) -> dspy.Module:
    label_type = Literal[tuple(labels)]  # type: ignore[valid-type]
    sig = dspy.Signature({"query": (str, dspy.InputField()), "intent": (label_type, dspy.OutputField())},
                         SEED_INSTRUCTION)
    return dspy.Predict(sig)


def accuracy(program, data, lm, threads: int) -> float:
    from concurrent.futures import ThreadPoolExecutor

    def one(ex):
        with dspy.context(lm=lm):
            try:
                return float(program(query=ex.query).intent == ex.intent)
            except Exception:
                return 0.0

    with ThreadPoolExecutor(threads) as pool:
        scores = list(pool.map(one, data))
    return sum(scores) / max(1, len(scores))


def run_one(rows, labels, seed, args, task_lm, refl_lm, test_rows=None):
    if test_rows is None:
        train, val, test = stratified_split(rows, seed, args.train, args.val, args.test)
    else:  # train/val from the main CSV, test from its own CSV
        train, val, _ = stratified_split(rows, seed, args.train, args.val, 0)
        test, _, _ = stratified_split(test_rows, seed, args.test, 0, 0)
    mk = lambda part: [dspy.Example(query=t, intent=c).with_inputs("query") for t, c in part]  # noqa: E731
    train, val, test = mk(train), mk(val), mk(test)
    program = make_program(labels)
    t0 = time.time()
    gepa = dspy.GEPA(
        metric=metric,
        max_metric_calls=args.max_metric_calls,
        reflection_lm=refl_lm,
        reflection_minibatch_size=args.minibatch,
        candidate_selection_strategy=args.selection,
        use_merge=args.merge,
        num_threads=args.threads,
        seed=seed,
        track_stats=True,
    )
    import contextlib
    import io

    quiet = io.StringIO()
    with dspy.context(lm=task_lm), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        best = gepa.compile(program, trainset=train, valset=val)
    secs = time.time() - t0
    res = best.detailed_results
    seed_val = res.val_aggregate_scores[0]
    best_val = res.val_aggregate_scores[res.best_idx]
    seed_test = accuracy(program, test, task_lm, args.threads)
    best_test = accuracy(best, test, task_lm, args.threads)
    instr = next(iter(best.named_predictors()))[1].signature.instructions
    return {
        "seed": seed,
        "seed_val": seed_val,
        "best_val": best_val,
        "seed_test": seed_test,
        "best_test": best_test,
        "n_candidates": len(res.candidates),
        "best_idx": res.best_idx,
        "metric_calls": res.total_metric_calls,
        "seconds": round(secs, 1),
        "n_rules": sum(1 for line in instr.splitlines() if line.strip().startswith("- If ")),
        "val_scores": [round(v, 3) for v in res.val_aggregate_scores],
        "parents": [list(p) for p in res.parents],
        "best_instruction": instr,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="?", help="CSV with columns text,category")
    ap.add_argument("--test-csv", help="draw the test split from this CSV (e.g. banking77 test.csv)")
    ap.add_argument("--generate", metavar="PATH", help="write a generated corpus to PATH and use it")
    ap.add_argument("--gen-seed", type=int, default=1234)
    ap.add_argument("--labels", help="JSON list of labels (default: the CSV's categories, sorted)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--val", type=int, default=150)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--max-metric-calls", type=int, default=1000)
    ap.add_argument("--minibatch", type=int, default=3)
    ap.add_argument("--selection", default="pareto", choices=["pareto", "current_best", "epsilon_greedy", "top_k_pareto"])
    ap.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--inproc", action="store_true", help="call the engine in-process instead of over HTTP")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--show-instruction", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="print val score and parents of every candidate")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="with --inproc: override a ScoreParams/LearnParams field (tuning aid)")
    args = ap.parse_args(argv)
    if args.param:
        if not args.inproc:
            ap.error("--param needs --inproc (the server process has its own defaults)")
        import dataclasses

        from gepa_lab.sim import reflection, task_model

        for item in args.param:
            key, _, raw = item.partition("=")
            value = json.loads(raw)
            for mod in (task_model, reflection):
                if key in {f.name for f in dataclasses.fields(mod.PARAMS)}:
                    mod.PARAMS = dataclasses.replace(mod.PARAMS, **{key: value})
                    break
            else:
                ap.error(f"unknown parameter {key}")

    path = args.csv
    if args.generate:
        generate_corpus(args.generate, seed=args.gen_seed)
        path = args.generate
    if not path:
        ap.error("give a CSV path or --generate PATH")
    rows = load_rows(path)
    test_rows = load_rows(args.test_csv) if args.test_csv else None
    labels = json.loads(Path(args.labels).read_text()) if args.labels else sorted({c for _, c in rows})

    sim = None
    if args.inproc:
        task_lm, refl_lm = InprocSimLM(), InprocSimLM()
    else:
        from gepa_lab.servers.simulator import start_simulator

        sim = start_simulator()
        task_lm = dspy.LM("openai/sim", api_base=sim.url, api_key="x", cache=False, num_retries=0)
        refl_lm = dspy.LM("openai/sim", api_base=sim.url, api_key="x", cache=False, num_retries=0)
    results = []
    try:
        for seed in args.seeds:
            r = run_one(rows, labels, seed, args, task_lm, refl_lm, test_rows)
            results.append(r)
            print(
                f"seed {seed}: val {r['seed_val']:.3f} -> {r['best_val']:.3f} ({r['best_val'] - r['seed_val']:+.3f})  "
                f"test {r['seed_test']:.3f} -> {r['best_test']:.3f} ({r['best_test'] - r['seed_test']:+.3f})  "
                f"cands {r['n_candidates']} rules {r['n_rules']} calls {r['metric_calls']} {r['seconds']}s",
                flush=True,
            )
            if args.verbose:
                print("   val by candidate:", r["val_scores"], "parents:", r["parents"])
            if args.show_instruction:
                print(r["best_instruction"])
    finally:
        if sim is not None:
            sim.stop()
    ok = sum(1 for r in results if r["best_val"] >= r["seed_val"] + 0.05 and r["best_test"] >= r["seed_test"] + 0.03)
    print(f"seeds meeting val +0.05 and test +0.03: {ok}/{len(results)}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
