"""A user's own two-step program, metric and corpus, brought in by import path (task.program / task.metric):
the first predictor names the team a support message goes to, the second reads the message and that team and
says how soon it needs an answer. Both outputs are plain `str` fields, and the metric scores both, with
feedback on each field in its own words (not gepa_lab's).

The corpus is generated from a seed: per-team and per-urgency cue words, filler, and a confusing cue of
another team in some messages. No answer value is ever a word of the message, so nothing is right before
something has been learned."""
from __future__ import annotations

import csv
import random
from pathlib import Path

import dspy

TEAMS = {
    "billing": ["invoice", "charged", "refund", "receipt", "payment"],
    "delivery": ["parcel", "courier", "tracking", "shipped", "package"],
    "login": ["password", "locked", "username", "signin", "verification"],
    "repairs": ["broken", "cracked", "screen", "battery", "warranty"],
}
URGENCY = {  # values with a space: str answers are not label-like names
    "same day": ["asap", "tonight", "immediately", "blocked", "deadline"],
    "next week": ["whenever", "eventually", "curious", "someday", "wondering"],
}
FILLER = ["hi", "please", "my", "the", "order", "thanks", "i", "need", "can", "you", "why", "is", "it", "account"]
TEMPLATES = [
    "{f1} {t1} {f2} {t2} {u1} {f3}",
    "{f1} {u1} {f2} {t1} {other} {f3}",
    "{t1} {f1} {f2} {u1} {u2}",
    "{f1} {f2} {t1} {f3} {t2} {u1} {f4}",
]


class RouteMessage(dspy.Signature):
    """Name the team that handles the support message."""

    message: str = dspy.InputField()
    team: str = dspy.OutputField()


class RateUrgency(dspy.Signature):
    """Say how soon the team must answer the support message."""

    message: str = dspy.InputField()
    team: str = dspy.InputField()
    urgency: str = dspy.OutputField()


class TwoStep(dspy.Module):
    def __init__(self):
        super().__init__()
        self.route = dspy.Predict(RouteMessage)
        self.rate = dspy.Predict(RateUrgency)

    def forward(self, message):
        team = self.route(message=message).team
        return dspy.Prediction(team=team, urgency=self.rate(message=message, team=team).urgency)


def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    """Half a point per field that matches; feedback names each field and what it should have been."""
    lines, right = [], 0
    for field in ("team", "urgency"):
        got, want = str(getattr(pred, field, "") or "").strip(), gold[field]
        if got.lower() == want.lower():
            right += 1
            lines.append(f"{field}: correct ({want}).")
        else:
            lines.append(f'{field}: expected "{want}", got "{got}".')
    return dspy.Prediction(score=right / 2, feedback="\n".join(lines))


def rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    teams, levels = sorted(TEAMS), sorted(URGENCY)
    out = []
    for i in range(n):
        team, level = teams[i % len(teams)], levels[(i // len(teams)) % len(levels)]
        t1, t2 = rng.sample(TEAMS[team], 2)
        u1, u2 = rng.sample(URGENCY[level], 2)
        other = rng.choice(TEAMS[rng.choice([t for t in teams if t != team])])
        message = rng.choice(TEMPLATES).format(
            t1=t1, t2=t2, u1=u1, u2=u2, other=other, **{f"f{k}": rng.choice(FILLER) for k in range(1, 5)}
        )
        out.append({"message": message, "team": team, "urgency": level})
    return out


def write(folder: Path, n: int = 240, seed: int = 0, splits: tuple[int, int, int] = (80, 40, 120)) -> Path:
    """Write support.csv and its corpus YAML (conf group layout: folder/corpus/two_step.yaml); returns the YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "support.csv"
    with data.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["message", "team", "urgency"])
        writer.writeheader()
        writer.writerows(rows(n, seed))
    conf = folder / "corpus" / "two_step.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    train, val, test = splits
    conf.write_text(
        f"""name: two_step
source:
  files: {data}
inputs: {{message: message}}
answer: {{team: team, urgency: urgency}}
kind: open
splits: {{train: {train}, val: {val}, test: {test}}}
seed: 0
license: CC0 1.0
"""
    )
    return conf
