"""A small classification corpus the simulator has never seen (support tickets of a made-up
bike-rental shop), generated from a seed: per-label cue words, words shared between labels,
filler, and label names that only sometimes appear in the text."""
from __future__ import annotations

import csv
import random
from pathlib import Path

LABELS = {
    "rental_extend": ["longer", "extra", "extend", "another", "keep"],
    "rental_cancel": ["cancel", "refund", "changed", "plans", "booking"],
    "bike_flat": ["tyre", "puncture", "flat", "pump", "air"],
    "bike_brakes": ["brake", "stop", "squeak", "lever", "slow"],
    "lock_stuck": ["lock", "key", "stuck", "chain", "open"],
    "station_full": ["dock", "full", "return", "slot", "space"],
    "app_login": ["password", "login", "sign", "code", "email"],
    "charge_double": ["twice", "charged", "double", "statement", "card"],
    "helmet_size": ["helmet", "size", "head", "small", "fit"],
    "route_map": ["route", "map", "trail", "directions", "path"],
}
FILLER = ["hi", "please", "help", "my", "the", "bike", "today", "urgent", "thanks", "i", "need", "can", "you", "why", "is", "it"]
TEMPLATES = [
    "{f1} {c1} {f2} {c2}",
    "{f1} {f2} {c1} {f3} {c2} {f4}",
    "{c1} {f1} {f2}",
    "{f1} {f2} {c1} {other} {f3}",
    "{f1} {c1} {f2} {c2} {f3} {other}",
]


def rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    names = sorted(LABELS)
    out = []
    for i in range(n):
        label = names[i % len(names)]
        cues = rng.sample(LABELS[label], 2)
        other = rng.choice(LABELS[rng.choice([x for x in names if x != label])])  # a confusing cue
        text = rng.choice(TEMPLATES).format(
            c1=cues[0], c2=cues[1], other=other, **{f"f{k}": rng.choice(FILLER) for k in range(1, 5)}
        )
        out.append({"ticket": text, "topic": label})
    return out


def write(folder: Path, n: int = 400, seed: int = 0) -> tuple[Path, Path]:
    """Write tickets.csv and a corpus YAML (conf group layout: folder/corpus/generated.yaml)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "tickets.csv"
    with data.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["ticket", "topic"])
        writer.writeheader()
        writer.writerows(rows(n, seed))
    conf = folder / "corpus" / "generated.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"""name: generated
source:
  files: {data}
inputs: {{ticket: ticket}}
answer: {{topic: topic}}
kind: classification
splits: {{train: 150, val: 80, test: 150}}
seed: 0
stratify: true
license: CC0 1.0
"""
    )
    return data, conf
